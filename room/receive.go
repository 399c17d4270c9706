package room

import (
	"errors"
	"slices"

	"github.com/beepvoice/router/rtc"
)

// The receive policy, for 1:1 calls (SylkServer's sessions): each side has
// one connection that both publishes and receives the other side, so the
// down-tracks of a participant's publishing connection are bound to the
// other participant's tracks, one of each kind.

// Receive makes the participant's publishing connection carry from's
// media: once the connection is up, each of its down-tracks (the m-lines
// of the client's offer that receive, or those the router offered with
// rtc.Peer.AddSendRecvTrack) is bound to from's first track of its kind,
// video from a keyframe on. from must be another participant of the same
// conversation; a later call replaces it.
func (p *Participant) Receive(from *Participant) error {
	if from == nil || from == p || from.c != p.c {
		return errors.New("room: a participant receives another participant of the same conversation")
	}
	if p.remote {
		return errRemote
	}
	m := p.m
	m.mu.Lock()
	if p.left || from.left {
		m.mu.Unlock()
		return ErrLeft
	}
	c := p.c
	c.mu.Lock()
	p.from = from
	if !slices.Contains(c.receivers, p) {
		c.receivers = append(c.receivers, p)
	}
	c.mu.Unlock()
	m.mu.Unlock()
	c.sync()
	return nil
}

// Publishing reports whether the participant is still in its conversation
// and has published at least one track: whether a feed of it carries
// media. A front-end lists the publishers of a conversation with it.
func (p *Participant) Publishing() bool {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	return !p.left && len(p.tracks) > 0
}

// bindReceivers binds the down-tracks of every receiving participant's
// connected publishing connection to the first track of each kind of the
// participant it receives, and adds them to assigned. Callers hold c.mu.
func (c *Conversation) bindReceivers(assigned map[*Track][]*rtc.DownTrack) {
	for _, r := range c.receivers {
		for _, d := range r.pubDowns {
			i := slices.IndexFunc(c.tracks, func(t *Track) bool { return t.part == r.from && t.Kind == d.Kind() })
			if i < 0 {
				d.SetSource(nil)
				continue
			}
			t := c.tracks[i]
			if d.Source() != t.UpTrack {
				d.SetSource(t.UpTrack)
			}
			assigned[t] = append(assigned[t], d)
		}
	}
}
