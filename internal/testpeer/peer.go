package testpeer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testutil"
)

// Options configure a Peer.
type Options struct {
	// API makes the peer connection (nil: a new NewAPI).
	API *webrtc.API
	// Media, if set, is what the peer sends (see AddTracks); the peer
	// closes it.
	Media *Media
	// CountOnly keeps no packet received, only the counts (and the first
	// video packet's arrival, codec and SSRC): for clients kept up long.
	CountOnly bool
}

// Peer is a pion client on loopback: a peer connection that records the
// tracks it receives, in arrival order, and may send Media. It takes the
// connection's OnTrack and OnConnectionStateChange handlers; the rest
// (candidates, data channels, signalling) is its user's.
type Peer struct {
	// PC is the peer connection.
	PC *webrtc.PeerConnection
	// Media is what the peer sends, or nil.
	Media *Media

	connected <-chan struct{}
	countOnly bool

	mu         sync.Mutex
	closing    bool
	wg         sync.WaitGroup // the track readers
	video      []*rtp.Packet
	firstVideo time.Time
	videoMime  string
	videoSSRC  uint32
	videoCount int
	frames     int // video packets with the marker bit
	frame      chan struct{}
	audio      []*rtp.Packet
	audioCount int

	closeOnce sync.Once
}

// NewPeer makes a Peer. It registers no cleanup, so that a goroutine other
// than the test's may make one: Close it.
func NewPeer(o Options) (*Peer, error) {
	api := o.API
	if api == nil {
		var err error
		if api, err = NewAPI(); err != nil {
			return nil, err
		}
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, err
	}
	p := &Peer{PC: pc, Media: o.Media, countOnly: o.CountOnly, frame: make(chan struct{})}
	p.connected = Connected(pc)
	pc.OnTrack(p.read)
	return p, nil
}

// Open is NewPeer for a test: an error fails tb, and tb's cleanup closes
// the peer.
func Open(tb testing.TB, o Options) *Peer {
	tb.Helper()
	p, err := NewPeer(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// OpenMedia is Open with a new Media of c: an error fails tb.
func OpenMedia(tb testing.TB, c MediaConfig) *Peer {
	tb.Helper()
	m, err := NewMedia(c)
	if err != nil {
		tb.Fatal(err)
	}
	return Open(tb, Options{Media: m})
}

// AddTracks adds the peer's Media's tracks (audio and video, in the
// Media's order) on new transceivers of direction dir or, when dir is
// zero, with AddTrack (onto the transceivers of a remote offer already
// applied), and reads their RTCP for keyframe requests. Media.Start then
// starts sending.
func (p *Peer) AddTracks(dir webrtc.RTPTransceiverDirection) error {
	return p.Media.addTo(p.PC, dir)
}

// Connected is closed once the peer connection is connected.
func (p *Peer) Connected() <-chan struct{} { return p.connected }

// Frame is closed once a whole video frame (a packet with the marker bit)
// has arrived.
func (p *Peer) Frame() <-chan struct{} { return p.frame }

// read records one received track until it ends.
func (p *Peer) read(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return
	}
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()
	video := tr.Kind() == webrtc.RTPCodecTypeVideo
	for {
		pkt, _, err := tr.ReadRTP()
		if err != nil {
			return
		}
		now := time.Now()
		p.mu.Lock()
		switch {
		case video:
			if p.videoCount == 0 {
				p.firstVideo, p.videoMime, p.videoSSRC = now, tr.Codec().MimeType, uint32(tr.SSRC())
			}
			p.videoCount++
			if !p.countOnly {
				p.video = append(p.video, pkt.Clone())
			}
			if pkt.Marker {
				if p.frames == 0 {
					close(p.frame)
				}
				p.frames++
			}
		default:
			p.audioCount++
			if !p.countOnly {
				p.audio = append(p.audio, pkt.Clone())
			}
		}
		p.mu.Unlock()
	}
}

// Counts returns the video frames (packets with the marker bit) and audio
// packets received so far.
func (p *Peer) Counts() (frames, audio int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.frames, p.audioCount
}

// UntilMedia waits until the peer has received frames video frames and
// audio audio packets, or ctx ends.
func (p *Peer) UntilMedia(ctx context.Context, frames, audio int) error {
	return testutil.Until(ctx, func() bool {
		f, a := p.Counts()
		return f >= frames && a >= audio
	})
}

// VideoPackets returns the video packets received so far, in arrival
// order.
func (p *Peer) VideoPackets() []*rtp.Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.video)
}

// AudioPackets returns the audio packets received so far, in arrival
// order.
func (p *Peer) AudioPackets() []*rtp.Packet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.audio)
}

// First returns the first video packet (nil if none), when it arrived, and
// the video codec.
func (p *Peer) First() (*rtp.Packet, time.Time, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.video) == 0 {
		return nil, time.Time{}, ""
	}
	return p.video[0], p.firstVideo, p.videoMime
}

// VideoMime is the codec of the video received ("" before any).
func (p *Peer) VideoMime() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.videoMime
}

// VideoSSRC is the SSRC of the video received (0 before any).
func (p *Peer) VideoSSRC() uint32 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.videoSSRC
}

// Close closes the peer connection, stops the Media, and waits for every
// goroutine of the peer. It may be called more than once.
func (p *Peer) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		_ = p.PC.Close()
		if p.Media != nil {
			p.Media.close()
		}
		p.wg.Wait()
	})
}
