package room_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	"github.com/pion/webrtc/v3/pkg/media"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/stages"
)

// TestMain is the one TestMain of the package's test binary (package room
// and room_test together): it fails the run if a goroutine (a peer, a track
// reader, a client) outlives the tests, and removes the media fixtures.
// VerifyTestMain exits the process, so the fixtures go in its cleanup, not
// in a defer.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testmedia.Cleanup()
		os.Exit(code)
	}))
}

// waitLong bounds every wait of the feed tests: generous, for -race on a
// busy machine of two cores.
const waitLong = 20 * time.Second

var loopback = net.IPv4(127, 0, 0, 1)

// deadline returns a context that ends after d or with the test.
func deadline(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newManager starts a Manager on the real default forwarding pipeline
// (permission gate, forwarder), with ICE on 127.0.0.1 only. Its log is
// shown if the test fails. Cleanup closes the Manager, then the pipeline.
func newManager(t *testing.T, media rtc.Config) *room.Manager {
	t.Helper()
	logs := &testutil.Buffer{}
	t.Cleanup(func() { // runs last
		if t.Failed() {
			t.Logf("router log:\n%s", logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	reg := pipeline.NewRegistry()
	stages.Register(reg)
	cfg, err := reg.Config(stages.GateKind, stages.ForwarderKind)
	if err != nil {
		t.Fatal(err)
	}
	p, err := reg.Build(cfg, pipeline.Env{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	media.ICEIPs = []net.IP{loopback}
	m, err := room.New(room.Config{Media: media, Sink: p, Logger: log})
	if err != nil {
		_ = p.Close(context.Background())
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close manager: %v", err)
		}
		if err := p.Close(ctx); err != nil {
			t.Errorf("close pipeline: %v", err)
		}
	})
	return m
}

// member is a participant with the events its watch got.
type member struct {
	*room.Participant
	events chan room.Event
}

// enter makes participant id of conversation conv. It leaves in the test's
// cleanup, before the Manager closes.
func enter(t *testing.T, m *room.Manager, conv, id string) *member {
	t.Helper()
	events := make(chan room.Event, 64)
	p, err := m.Enter(conv, id, claim.Claim{UserID: id, ClientID: id + "-1"}, func(e room.Event) {
		select {
		case events <- e: // the watch must not block
		default:
		}
	})
	if err != nil {
		t.Fatalf("enter %s: %v", id, err)
	}
	t.Cleanup(p.Leave)
	return &member{Participant: p, events: events}
}

// waitEvent waits for the event kind about participant of, skipping others.
func (mb *member) waitEvent(ctx context.Context, kind room.EventKind, of *room.Participant) bool {
	for {
		select {
		case e := <-mb.events:
			if e.Kind == kind && e.Participant == of {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}

// clientAPI returns the pion API of a test client: pion's default codecs
// and interceptors (NACK generator and responder, RTCP reports, TWCC), and
// ICE on 127.0.0.1 over UDP4 only, without mDNS, like beepclient's.
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

// videoCapability is what a publisher sends for mime: H264 as the router
// negotiates it (constrained baseline, packetization mode 1).
func videoCapability(mime string) webrtc.RTPCodecCapability {
	c := webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 90000}
	if mime == webrtc.MimeTypeH264 {
		c.SDPFmtpLine = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
	}
	return c
}

// gather sets d as pc's local description and waits for its candidates.
func gather(ctx context.Context, pc *webrtc.PeerConnection, d webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(d); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return pc.LocalDescription().SDP, nil
}

// publisher is a pion client that publishes a video fixture at 30 frames a
// second, looped, and silent Opus every 20 ms, on sendonly m-lines. Like an
// encoder, it answers a keyframe request (PLI or FIR) by making its next
// frame a keyframe: it skips ahead to the fixture's next one.
type publisher struct {
	pc     *webrtc.PeerConnection
	video  *webrtc.TrackLocalStaticSample
	audio  *webrtc.TrackLocalStaticSample
	frames []testmedia.Frame

	framesSent, audioSent atomic.Int64
	keyframe              chan struct{} // capacity 1: a keyframe is due

	mu      sync.Mutex
	keyReqs []time.Time // arrivals of the PLIs and FIRs received

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// publish connects a publisher client for participant p and starts sending
// once both ends are connected. Cleanup closes it.
func publish(t *testing.T, ctx context.Context, p *room.Participant, mime string, frames []testmedia.Frame) *publisher {
	t.Helper()
	pc, err := clientAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c := &publisher{pc: pc, frames: frames, keyframe: make(chan struct{}, 1), stop: make(chan struct{})}
	t.Cleanup(c.close)
	connected := clientConnected(pc)
	if c.video, err = webrtc.NewTrackLocalStaticSample(videoCapability(mime), "video", "pub-"+p.ID); err != nil {
		t.Fatal(err)
	}
	if c.audio, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "pub-"+p.ID); err != nil {
		t.Fatal(err)
	}
	for _, track := range []*webrtc.TrackLocalStaticSample{c.video, c.audio} {
		tr, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
		if err != nil {
			t.Fatal(err)
		}
		c.wg.Add(1)
		go c.readRTCP(tr.Sender())
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	offerSDP, err := gather(ctx, pc, offer)
	if err != nil {
		t.Fatalf("publisher %s: gather: %v", p.ID, err)
	}
	peer, err := p.Publisher()
	if err != nil {
		t.Fatalf("publisher %s: %v", p.ID, err)
	}
	if _, err := peer.Answer(offerSDP); err != nil {
		t.Fatalf("publisher %s: answer: %v", p.ID, err)
	}
	answer := peer.WaitGathered(ctx)
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatalf("publisher %s: apply answer: %v", p.ID, err)
	}
	for _, ch := range []<-chan struct{}{connected, peer.Connected()} {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("publisher %s: not connected", p.ID)
		}
	}
	c.wg.Add(2)
	go c.sendVideo()
	go c.sendAudio()
	return c
}

// clientConnected returns a channel closed once pc is connected.
func clientConnected(pc *webrtc.PeerConnection) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(ch) })
		}
	})
	return ch
}

// readRTCP reads a sender's RTCP, which drives pion's NACK responder, and
// notes the keyframe requests.
func (c *publisher) readRTCP(s *webrtc.RTPSender) {
	defer c.wg.Done()
	for {
		pkts, _, err := s.ReadRTCP()
		if err != nil {
			return
		}
		now := time.Now()
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				c.mu.Lock()
				c.keyReqs = append(c.keyReqs, now)
				c.mu.Unlock()
				select {
				case c.keyframe <- struct{}{}:
				default:
				}
			}
		}
	}
}

// keyRequests returns the arrival times of the keyframe requests so far.
func (c *publisher) keyRequests() []time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.keyReqs)
}

// keyRequestsBetween counts the keyframe requests that arrived in [from, to].
func (c *publisher) keyRequestsBetween(from, to time.Time) int {
	n := 0
	for _, at := range c.keyRequests() {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

func (c *publisher) sendVideo() {
	defer c.wg.Done()
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	i := 0
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		select {
		case <-c.keyframe:
			for !c.frames[i].Keyframe {
				i = (i + 1) % len(c.frames)
			}
		default:
		}
		f := c.frames[i]
		i = (i + 1) % len(c.frames)
		if err := c.video.WriteSample(media.Sample{Data: f.Data, Duration: f.Duration}); err == nil {
			c.framesSent.Add(1)
		}
	}
}

// silence is an Opus frame of 20 ms of silence.
var silence = []byte{0xf8, 0xff, 0xfe}

func (c *publisher) sendAudio() {
	defer c.wg.Done()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		if err := c.audio.WriteSample(media.Sample{Data: silence, Duration: 20 * time.Millisecond}); err == nil {
			c.audioSent.Add(1)
		}
	}
}

func (c *publisher) close() {
	c.closeOnce.Do(func() {
		close(c.stop)
		_ = c.pc.Close()
		c.wg.Wait()
	})
}

// subscriber is a pion client that answers a feed's offer and records the
// video packets it receives, in arrival order, and the audio headers.
type subscriber struct {
	pc *webrtc.PeerConnection

	mu         sync.Mutex
	closing    bool
	wg         sync.WaitGroup
	video      []*rtp.Packet
	firstVideo time.Time
	videoMime  string
	videoSSRC  uint32
	frames     int // video packets with the marker bit
	audio      []rtp.Header
}

// subOptions rewrite the signalling of a subscriber (to route it through a
// relay).
type subOptions struct {
	offerFilter, answerFilter func(sdp string) string
}

// subscribe connects a subscriber client to feed f: the router offers, the
// client answers. It does not wait for the connection. Cleanup closes it.
func subscribe(t *testing.T, ctx context.Context, f *room.Feed, o subOptions) *subscriber {
	t.Helper()
	pc, err := clientAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	s := &subscriber{pc: pc}
	t.Cleanup(s.close)
	pc.OnTrack(s.read)
	offer, err := f.Peer().Offer(ctx)
	if err != nil {
		t.Fatalf("feed offer: %v", err)
	}
	if o.offerFilter != nil {
		offer = o.offerFilter(offer)
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		t.Fatalf("subscriber: apply the feed's offer: %v", err)
	}
	answer, err := pc.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	answerSDP, err := gather(ctx, pc, answer)
	if err != nil {
		t.Fatalf("subscriber: gather: %v", err)
	}
	if o.answerFilter != nil {
		answerSDP = o.answerFilter(answerSDP)
	}
	if err := f.Peer().SetAnswer(answerSDP); err != nil {
		t.Fatalf("feed answer: %v", err)
	}
	return s
}

// read records one received track until it ends.
func (s *subscriber) read(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	video := tr.Kind() == webrtc.RTPCodecTypeVideo
	for {
		p, _, err := tr.ReadRTP()
		if err != nil {
			return
		}
		now := time.Now()
		s.mu.Lock()
		if video {
			if len(s.video) == 0 {
				s.firstVideo, s.videoMime, s.videoSSRC = now, tr.Codec().MimeType, uint32(tr.SSRC())
			}
			s.video = append(s.video, p.Clone())
			if p.Marker {
				s.frames++
			}
		} else {
			s.audio = append(s.audio, p.Header.Clone())
		}
		s.mu.Unlock()
	}
}

// counts returns the video frames (marker packets) and audio packets so far.
func (s *subscriber) counts() (frames, audio int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.frames, len(s.audio)
}

// videoPackets returns the video packets received so far, in arrival order.
func (s *subscriber) videoPackets() []*rtp.Packet {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.video)
}

// first returns the first video packet, when it arrived, and the codec.
func (s *subscriber) first() (*rtp.Packet, time.Time, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.video) == 0 {
		return nil, time.Time{}, ""
	}
	return s.video[0], s.firstVideo, s.videoMime
}

func (s *subscriber) audioHeaders() []rtp.Header {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.audio)
}

func (s *subscriber) close() {
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	_ = s.pc.Close()
	s.wg.Wait()
}

// untilFrames waits until s has received frames video frames and audio
// audio packets.
func (s *subscriber) untilFrames(ctx context.Context, frames, audio int) error {
	return testutil.Until(ctx, func() bool {
		f, a := s.counts()
		return f >= frames && a >= audio
	})
}

// throughMarker returns pkts up to its last packet with the marker bit:
// the end of the last complete frame.
func throughMarker(pkts []*rtp.Packet) []*rtp.Packet {
	for i := len(pkts) - 1; i >= 0; i-- {
		if pkts[i].Marker {
			return pkts[:i+1]
		}
	}
	return nil
}

// viaRelay returns the signalling rewrites that make a subscriber reach the
// router (on its one UDP port) through relay only: the router's candidate
// names the relay's port, and the client's answer carries no candidate, so
// that the router learns the client only as the relay's address (a
// peer-reflexive candidate) and sends it nothing directly.
func viaRelay(routerPort int, relay *testutil.Relay) subOptions {
	return subOptions{
		offerFilter: func(sdp string) string {
			return strings.ReplaceAll(sdp, " "+strconv.Itoa(routerPort)+" typ host", " "+strconv.Itoa(relay.Port())+" typ host")
		},
		answerFilter: func(sdp string) string {
			var out []string
			for _, l := range strings.SplitAfter(sdp, "\n") {
				if !strings.HasPrefix(l, "a=candidate:") {
					out = append(out, l)
				}
			}
			return strings.Join(out, "")
		},
	}
}
