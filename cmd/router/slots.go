package main

import "github.com/pion/webrtc/v3"

// slotUsers returns whose audio each receiving slot of a connected device
// carries now (user ids in m-line order, "" for an idle slot), or nil when
// the device is not connected. The demo page labels its channels with it.
func (a *app) slotUsers(user, client string) []string {
	p := a.rooms.Peer(user, client)
	if p == nil {
		return nil
	}
	select {
	case <-p.Connected(): // the down-tracks are fixed from here on
	default:
		return nil
	}
	var out []string
	for _, d := range p.DownTracks() {
		if d.Kind() != webrtc.RTPCodecTypeAudio {
			continue
		}
		who := ""
		if up := d.Source(); up != nil {
			who = up.Claim().UserID
		}
		out = append(out, who)
	}
	return out
}
