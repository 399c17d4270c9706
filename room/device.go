package room

import (
	"errors"

	"github.com/beepvoice/router/rtc"
)

// device is one device of a user: its peer connection and the tracks it
// publishes. It is the peer's rtc.Handler.
type device struct {
	m    *Manager
	peer *rtc.Peer

	// user, connected and published are guarded by Manager.mu. user is set
	// when the Manager admits the device; nil means it was never admitted.
	user      *User
	connected bool
	published []*Track

	// slots are the device's down-tracks, one per receiving audio m-line
	// of its offer; set when it connects, fixed after.
	slots []*rtc.DownTrack
}

// Connected implements rtc.Handler: the device's down-tracks start
// receiving from its user's conversation.
func (d *device) Connected(*rtc.Peer) { d.m.deviceConnected(d) }

// Closed implements rtc.Handler: the device is forgotten.
func (d *device) Closed(*rtc.Peer) { d.m.deviceClosed(d) }

// Published implements rtc.Handler: the track gets its pipeline chain and
// joins the user's conversation.
func (d *device) Published(up *rtc.UpTrack) (rtc.TrackSink, error) {
	d.m.mu.Lock()
	u := d.user
	d.m.mu.Unlock()
	if u == nil {
		return nil, errors.New("room: track of a device that was never admitted")
	}
	t := NewTrack(u, up)
	sink, err := d.m.cfg.Sink.Open(t)
	if err != nil {
		return nil, err
	}
	d.m.trackStarted(d, t)
	return sink, nil
}

// Unpublished implements rtc.Handler: the track leaves its conversation.
func (d *device) Unpublished(up *rtc.UpTrack) { d.m.trackEnded(d, up) }
