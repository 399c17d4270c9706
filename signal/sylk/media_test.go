package sylk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"
	"github.com/pion/webrtc/v3/pkg/media"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testutil"
)

// clientAPI returns the pion API of a test client: pion's default codecs
// and interceptors, ICE on 127.0.0.1 over UDP4 only, without mDNS.
func clientAPI(t *testing.T) *webrtc.API {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		t.Fatal(err)
	}
	s := webrtc.SettingEngine{}
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(loopback) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s))
}

// peer is a pion client behaving as sylkrtc.js does on the wire: its SDP
// carries no candidates, which it trickles one per request after the
// request that carried the SDP, then an empty list. It may send the VP8
// fixture at 30 frames a second and silent Opus every 20 ms, and records
// what it receives.
type peer struct {
	t  *testing.T
	pc *webrtc.PeerConnection

	video, audio *webrtc.TrackLocalStaticSample
	frames       []testmedia.Frame
	keyframe     chan struct{}
	connected    chan struct{}
	sent         atomic.Int64

	// Trickle.
	tmu     sync.Mutex
	c       *client
	typ     string
	session string
	pending []webrtc.ICECandidateInit
	ended   bool
	txs     []string

	mu         sync.Mutex
	closing    bool
	videoPkts  []*rtp.Packet
	videoMime  string
	videoFrame int
	audioPkts  int

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// newPeer makes a client peer; with frames, it has VP8 and Opus tracks to
// send (added by addTracks).
func newPeer(t *testing.T, frames []testmedia.Frame) *peer {
	t.Helper()
	pc, err := clientAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, pc: pc, frames: frames, keyframe: make(chan struct{}, 1), connected: make(chan struct{}), stop: make(chan struct{})}
	t.Cleanup(p.close)
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(p.connected) })
		}
	})
	pc.OnICECandidate(p.candidate)
	pc.OnTrack(p.read)
	if frames != nil {
		if p.video, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", "stream"); err != nil {
			t.Fatal(err)
		}
		if p.audio, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "stream"); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// addTracks adds the peer's tracks on new transceivers of direction dir,
// or, when dir is zero, with AddTrack (onto the transceivers of an offer
// already applied).
func (p *peer) addTracks(dir webrtc.RTPTransceiverDirection) {
	p.t.Helper()
	for _, track := range []*webrtc.TrackLocalStaticSample{p.audio, p.video} {
		var sender *webrtc.RTPSender
		if dir == 0 {
			s, err := p.pc.AddTrack(track)
			if err != nil {
				p.t.Fatal(err)
			}
			sender = s
		} else {
			tr, err := p.pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: dir})
			if err != nil {
				p.t.Fatal(err)
			}
			sender = tr.Sender()
		}
		p.wg.Add(1)
		go p.readRTCP(sender)
	}
	p.wg.Add(2)
	go p.sendVideo()
	go p.sendAudio()
}

// offer makes the peer's offer; its SDP has no candidates.
func (p *peer) offer() string {
	p.t.Helper()
	o, err := p.pc.CreateOffer(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.pc.SetLocalDescription(o); err != nil {
		p.t.Fatal(err)
	}
	if strings.Contains(o.SDP, "a=candidate") {
		p.t.Fatal("the client's offer carries candidates")
	}
	return o.SDP
}

// answer applies the router's offer and returns the peer's answer,
// without candidates.
func (p *peer) answer(offer string) string {
	p.t.Helper()
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		p.t.Fatalf("apply the router's offer: %v", err)
	}
	if p.audio != nil {
		p.addTracks(0)
	}
	a, err := p.pc.CreateAnswer(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.pc.SetLocalDescription(a); err != nil {
		p.t.Fatal(err)
	}
	return a.SDP
}

// apply applies the router's answer.
func (p *peer) apply(answer string) {
	p.t.Helper()
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		p.t.Fatalf("apply the router's answer: %v", err)
	}
}

// trickle starts sending the peer's candidates as requests typ for
// session: those gathered so far, then each as it comes, then [].
func (p *peer) trickle(c *client, typ, session string) {
	p.tmu.Lock()
	defer p.tmu.Unlock()
	p.c, p.typ, p.session = c, typ, session
	for _, ci := range p.pending {
		p.sendCandidates([]webrtc.ICECandidateInit{ci})
	}
	p.pending = nil
	if p.ended {
		p.sendCandidates([]webrtc.ICECandidateInit{})
	}
}

func (p *peer) candidate(cand *webrtc.ICECandidate) {
	p.tmu.Lock()
	defer p.tmu.Unlock()
	if cand == nil {
		p.ended = true
		if p.c != nil {
			p.sendCandidates([]webrtc.ICECandidateInit{})
		}
		return
	}
	if p.c == nil {
		p.pending = append(p.pending, cand.ToJSON())
		return
	}
	p.sendCandidates([]webrtc.ICECandidateInit{cand.ToJSON()})
}

// sendCandidates sends one trickle request. Callers hold tmu. It runs on
// pion's goroutines: an error is reported, not fatal.
func (p *peer) sendCandidates(cands []webrtc.ICECandidateInit) {
	tx := p.c.tx()
	b, _ := json.Marshal(map[string]any{"sylkrtc": p.typ, "transaction": tx, "session": p.session, "candidates": cands})
	p.c.wmu.Lock()
	_ = p.c.ws.SetWriteDeadline(time.Now().Add(waitLong))
	err := p.c.ws.WriteMessage(1, b)
	p.c.wmu.Unlock()
	if err != nil {
		return // the test closed the socket
	}
	p.txs = append(p.txs, tx)
}

// checkTrickles checks that every trickle request was acked, and that the
// last one ended the candidates.
func (p *peer) checkTrickles() {
	p.t.Helper()
	p.tmu.Lock()
	txs := slices.Clone(p.txs)
	p.tmu.Unlock()
	if len(txs) < 2 {
		p.t.Errorf("%d trickle requests sent, want candidates and the end", len(txs))
	}
	for _, tx := range txs {
		if r := p.c.reply(tx); r.str("sylkrtc") != "ack" {
			p.t.Errorf("trickle %s: %v, want ack", tx, r)
		}
	}
}

// waitConnected waits for the peer's connection.
func (p *peer) waitConnected(ctx context.Context, what string) {
	p.t.Helper()
	select {
	case <-p.connected:
	case <-ctx.Done():
		p.t.Fatalf("%s: not connected", what)
	}
}

func (p *peer) readRTCP(s *webrtc.RTPSender) {
	defer p.wg.Done()
	for {
		pkts, _, err := s.ReadRTCP()
		if err != nil {
			return
		}
		for _, pk := range pkts {
			switch pk.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				select {
				case p.keyframe <- struct{}{}:
				default:
				}
			}
		}
	}
}

// sendVideo sends the fixture once connected, looped; a keyframe request
// makes the next frame a keyframe, as an encoder would.
func (p *peer) sendVideo() {
	defer p.wg.Done()
	select {
	case <-p.connected:
	case <-p.stop:
		return
	}
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	i := 0
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		select {
		case <-p.keyframe:
			for !p.frames[i].Keyframe {
				i = (i + 1) % len(p.frames)
			}
		default:
		}
		f := p.frames[i]
		i = (i + 1) % len(p.frames)
		if err := p.video.WriteSample(media.Sample{Data: f.Data, Duration: f.Duration}); err == nil {
			p.sent.Add(1)
		}
	}
}

// silence is an Opus frame of 20 ms of silence.
var silence = []byte{0xf8, 0xff, 0xfe}

func (p *peer) sendAudio() {
	defer p.wg.Done()
	select {
	case <-p.connected:
	case <-p.stop:
		return
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		_ = p.audio.WriteSample(media.Sample{Data: silence, Duration: 20 * time.Millisecond})
	}
}

// read records one received track until it ends.
func (p *peer) read(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
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
		p.mu.Lock()
		if video {
			p.videoMime = tr.Codec().MimeType
			p.videoPkts = append(p.videoPkts, pkt.Clone())
			if pkt.Marker {
				p.videoFrame++
			}
		} else {
			p.audioPkts++
		}
		p.mu.Unlock()
	}
}

// counts returns the video frames and audio packets received.
func (p *peer) counts() (frames, audio int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.videoFrame, p.audioPkts
}

// untilMedia waits until the peer received frames video frames and audio
// audio packets.
func (p *peer) untilMedia(ctx context.Context, what string, frames, audio int) {
	p.t.Helper()
	if err := testutil.Until(ctx, func() bool {
		f, a := p.counts()
		return f >= frames && a >= audio
	}); err != nil {
		f, a := p.counts()
		p.t.Fatalf("%s: received %d video frames and %d audio packets, want %d and %d", what, f, a, frames, audio)
	}
}

// decodeVideo decodes the video received (through its last complete
// frame) with libvpx and returns the frames decoded and the errors.
func (p *peer) decodeVideo() (frames int, errs []string, mime string) {
	p.t.Helper()
	p.mu.Lock()
	pkts := slices.Clone(p.videoPkts)
	mime = p.videoMime
	p.mu.Unlock()
	for i := len(pkts) - 1; i >= 0; i-- {
		if pkts[i].Marker {
			pkts = pkts[:i+1]
			break
		}
	}
	frames, errs = testmedia.DecodeVP8(p.t, pkts)
	return frames, errs, mime
}

func (p *peer) close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		close(p.stop)
		_ = p.pc.Close()
		p.wg.Wait()
	})
}

// ssrcInEveryMedia checks that every m-section of offer has a=ssrc lines.
func ssrcInEveryMedia(offer string) error {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(offer); err != nil {
		return err
	}
	if len(d.MediaDescriptions) == 0 {
		return fmt.Errorf("no m-section")
	}
	for i, m := range d.MediaDescriptions {
		if !slices.ContainsFunc(m.Attributes, func(a sdp.Attribute) bool { return a.Key == "ssrc" }) {
			return fmt.Errorf("m-section %d (%s) without a=ssrc", i, m.MediaName.Media)
		}
	}
	return nil
}

// candidates counts the a=candidate lines of an SDP.
func candidates(s string) int { return strings.Count(s, "a=candidate:") }
