package room

import (
	"errors"
	"slices"
	"sync"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/rtc"
)

// Feed is a connection the router offers to a subscribing participant,
// carrying one publisher's audio and video: one down-track of each kind,
// bound to the publisher's first track of that kind. The front-end makes
// the offer (Peer().Offer), applies the client's answer (Peer().SetAnswer)
// and passes candidates both ways; the feed sends once it is connected and
// the publisher's media exists, video from a keyframe on. It ends when
// either participant leaves, its connection fails, or Close is called: Done
// is closed, and Err says why.
type Feed struct {
	sub, pub *Participant
	peer     *rtc.Peer
	downs    map[webrtc.RTPCodecType]*rtc.DownTrack

	connected bool // Conversation.mu: the peer is up; bind its down-tracks

	once sync.Once
	done chan struct{}
	err  error // set before done closes
}

// ErrFeedClosed is the Err of a feed closed by its front-end.
var ErrFeedClosed = errors.New("feed closed")

// Subscribe makes the feed of publisher pub for participant p: a peer
// connection with an audio and a video down-track, for the front-end to
// offer. pub must be another participant of p's conversation.
func (p *Participant) Subscribe(pub *Participant) (*Feed, error) {
	if pub == p || pub.c != p.c {
		return nil, errors.New("room: a feed is of another participant of the same conversation")
	}
	if p.remote {
		return nil, errRemote
	}
	f := &Feed{sub: p, pub: pub, downs: make(map[webrtc.RTPCodecType]*rtc.DownTrack, 2), done: make(chan struct{})}
	peer, err := p.m.engine.NewPeer(p.Claim, f, rtc.PeerOptions{Video: true})
	if err != nil {
		return nil, err
	}
	f.peer = peer
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		d, err := peer.AddDownTrack(kind)
		if err != nil {
			peer.Close()
			return nil, err
		}
		f.downs[kind] = d
	}
	m := p.m
	m.mu.Lock()
	if p.left || pub.left {
		m.mu.Unlock()
		peer.Close()
		return nil, ErrLeft
	}
	c := p.c
	c.mu.Lock()
	c.feeds = append(c.feeds, f)
	c.mu.Unlock()
	m.mu.Unlock()
	return f, nil
}

// Peer returns the feed's connection, for signalling.
func (f *Feed) Peer() *rtc.Peer { return f.peer }

// Subscriber returns the participant who receives the feed.
func (f *Feed) Subscriber() *Participant { return f.sub }

// Publisher returns the participant whose media the feed carries.
func (f *Feed) Publisher() *Participant { return f.pub }

// Done is closed when the feed has ended.
func (f *Feed) Done() <-chan struct{} { return f.done }

// Err says why the feed ended; nil before Done is closed.
func (f *Feed) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// Close ends the feed.
func (f *Feed) Close() { f.end(ErrFeedClosed, true) }

// end ends the feed for reason err, once: it leaves its conversation, its
// down-tracks are unbound and, if closePeer, its connection closed
// (closePeer is false when the connection is closing already: end is then
// called from within its Close). Callers hold no lock.
func (f *Feed) end(err error, closePeer bool) {
	first := false
	f.once.Do(func() {
		first = true
		f.err = err
		c := f.sub.c
		c.mu.Lock()
		c.feeds = slices.DeleteFunc(c.feeds, func(g *Feed) bool { return g == f })
		for _, d := range f.downs {
			d.SetSource(nil)
		}
		c.mu.Unlock()
		close(f.done)
	})
	if !first {
		return
	}
	if closePeer {
		f.peer.Close()
	}
	f.sub.c.Reassign()
}

// Connected implements rtc.Handler: the feed's down-tracks get bound.
func (f *Feed) Connected(*rtc.Peer) {
	c := f.sub.c
	c.mu.Lock()
	f.connected = true
	c.mu.Unlock()
	c.sync()
}

// Closed implements rtc.Handler: a feed whose connection is gone ends.
func (f *Feed) Closed(*rtc.Peer) { f.end(errFeedConnClosed, false) }

// errFeedConnClosed is the Err of a feed whose connection closed (ICE or
// DTLS failed, the client went away, or the router is closing).
var errFeedConnClosed = errors.New("feed connection closed")

// Published implements rtc.Handler: a feed only sends; a track the client
// sends on it is refused.
func (f *Feed) Published(*rtc.UpTrack) (rtc.TrackSink, error) {
	return nil, errors.New("room: feeds receive nothing")
}

// Unpublished implements rtc.Handler.
func (f *Feed) Unpublished(*rtc.UpTrack) {}

// bindFeeds binds every connected feed's down-tracks to its publisher's
// first track of each kind, and adds them to assigned. Callers hold c.mu.
func (c *Conversation) bindFeeds(assigned map[*Track][]*rtc.DownTrack) {
	for _, f := range c.feeds {
		if !f.connected {
			continue
		}
		for kind, d := range f.downs {
			i := slices.IndexFunc(c.tracks, func(t *Track) bool { return t.part == f.pub && t.Kind == kind })
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
