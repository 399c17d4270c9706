package cluster

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/rtc/codec"
)

// vp8Packet returns a VP8 RTP packet (SSRC 4321) with sequence number seq,
// the start of a keyframe.
func vp8Packet(seq uint16) []byte {
	b := []byte{0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0xe1, 0x10, 0x00, 0x00, 0x9d, 0x01, 0x2a}
	binary.BigEndian.PutUint16(b[2:4], seq)
	binary.BigEndian.PutUint32(b[4:8], uint32(seq)*3000)
	return b
}

// TestRelayedVideoKeyframe: a local VP8 track of router A is relayed in
// a frame that names its codec; router B makes a video track of it, and a
// keyframe request on that track (what B's down-tracks make while they
// wait for a keyframe, or when a subscriber sends a PLI) reaches the
// publisher's track on A over NATS. A request for a track A no longer
// relays is counted and goes nowhere.
func TestRelayedVideoKeyframe(t *testing.T) {
	ns := testutil.StartNATS(t, testutil.JetStream)
	a := newRouter(t, ns.URL())
	b := newRouter(t, ns.URL())
	nc := connect(t, ns.URL())
	frames := watchRelay(t, ns.URL())
	for _, r := range []struct {
		r    *router
		user string
	}{{a, "alice"}, {b, "bob"}} {
		if err := r.r.rooms.Join(r.user, "c-1"); err != nil {
			t.Fatal(err)
		}
	}

	// alice's camera on A; its keyframe requests are what A would send
	// her as a PLI.
	asked := make(chan struct{}, 4)
	cam := rtc.NewRelayedUpTrack(claim.Claim{UserID: "alice", ClientID: "alice-phone"}, 4321,
		webrtc.RTPCodecTypeVideo, codec.VP8.RTPCodecCapability, 0, func() { asked <- struct{}{} })
	ts, err := a.node.Sink(nopSink{}).Open(room.NewTrack(a.rooms.User("alice"), cam))
	if err != nil {
		t.Fatal(err)
	}
	relay, ok := ts.(*trackRelay)
	if !ok {
		t.Fatalf("sink of a video track is %T, not a relay", ts)
	}
	announce(t, nc, "other", time.Hour, "c-1")
	testutil.Eventually(t, 5*time.Second, "interest in c-1", func() bool { return a.node.Relaying("c-1") == 1 })
	if err := ts.WriteRTP(vp8Packet(1), time.Now()); err != nil {
		t.Fatal(err)
	}
	m := next(t, frames)
	f, err := parseFrame(m.Data)
	if err != nil || m.Data[0] != frameVersionCodec || f.codec != codecVP8 || f.key != relay.key {
		t.Fatalf("relayed %+v %v; want a version 2 VP8 frame of track %d", f, err, relay.key)
	}

	// B receives the frame as its relay subscription would.
	s := b.relaySub("c-1")
	s.handle(m.Data, time.Now())
	rt := s.tracks[relay.key]
	if rt == nil || rt.t == nil || !rt.t.Video() || rt.t.Codec.MimeType != webrtc.MimeTypeVP8 {
		t.Fatalf("remote track %+v, want alice's VP8 video", rt)
	}
	if !rt.t.RequestKeyframe() {
		t.Fatal("the remote video track sent no keyframe request")
	}
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("the keyframe request did not reach the publisher's track on A")
	}
	if out, in := b.node.Stats().KeyframesOut, a.node.Stats().KeyframesIn; out != 1 || in != 1 {
		t.Fatalf("keyframe requests: %d out of B, %d into A; want 1, 1", out, in)
	}

	// Once alice's track ends on A, a request for it finds nothing.
	ts.Close()
	b.node.askKeyframe(b.node.keySubject(a.node.origin), relay.key)
	testutil.Eventually(t, 5*time.Second, "the request for an ended track counted", func() bool {
		return a.node.Stats().KeyframesNoTrack == 1
	})
	select {
	case <-asked:
		t.Fatal("a request for an ended track reached it")
	default:
	}
}

// BenchmarkRelaySendVideo is BenchmarkRelaySend with a VP8 track's
// 1100-byte packets: the cost of relaying a video packet out, queueing and
// publishing to NATS included.
func BenchmarkRelaySendVideo(b *testing.B) {
	ns := testutil.StartNATS(b, testutil.JetStream)
	a := newRouter(b, ns.URL())
	if err := a.rooms.Join("alice", "c-1"); err != nil {
		b.Fatal(err)
	}
	a.node.interest.set("other", 0, true, []string{"c-1"}, time.Now(), time.Hour)
	cam := rtc.NewRelayedUpTrack(claim.Claim{UserID: "alice", ClientID: "alice-phone"}, 4321,
		webrtc.RTPCodecTypeVideo, codec.VP8.RTPCodecCapability, 0, func() {})
	tr, err := a.node.Sink(nopSink{}).Open(room.NewTrack(a.rooms.User("alice"), cam))
	if err != nil {
		b.Fatal(err)
	}
	pkt := append(vp8Packet(1), make([]byte, 1100-len(vp8Packet(1)))...)
	now := time.Now()
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	relayBursts(b, a.node, tr, pkt, now)
	tr.Close()
}

// BenchmarkKeyframeRoundTrip is the router's part of a keyframe across
// routers on loopback: router B asks A for a keyframe of a relayed VP8
// track (askKeyframe), A passes it to the publisher's track, whose
// "publisher" answers at once with a keyframe packet, which A relays; the
// op ends when the frame arrives on B's side of NATS. The publisher's
// encoder is not in it. p50-µs is the median op.
func BenchmarkKeyframeRoundTrip(b *testing.B) {
	ns := testutil.StartNATS(b, testutil.JetStream)
	a := newRouter(b, ns.URL())
	bn := newRouter(b, ns.URL())
	if err := a.rooms.Join("alice", "c-1"); err != nil {
		b.Fatal(err)
	}
	a.node.interest.set("other", 0, true, []string{"c-1"}, time.Now(), time.Hour)
	frames := make(chan *nats.Msg, 64)
	sub, err := bn.nc.ChanSubscribe(DefaultPrefix+"relay.c-1", frames)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := bn.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	var tr rtc.TrackSink
	seq := uint16(0)
	// The publisher answers each request with a keyframe, from the
	// request's goroutine (A's keyframe subscription).
	cam := rtc.NewRelayedUpTrack(claim.Claim{UserID: "alice", ClientID: "alice-phone"}, 4321,
		webrtc.RTPCodecTypeVideo, codec.VP8.RTPCodecCapability, 0, func() {
			seq++
			_ = tr.WriteRTP(vp8Packet(seq), time.Now())
		})
	tr, err = a.node.Sink(nopSink{}).Open(room.NewTrack(a.rooms.User("alice"), cam))
	if err != nil {
		b.Fatal(err)
	}
	cam.SetKeyframeInterval(0) // every op's request reaches the publisher
	key := tr.(*trackRelay).key
	subj := bn.node.keySubject(a.node.origin)
	took := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		bn.node.askKeyframe(subj, key)
		select {
		case <-frames:
		case <-time.After(5 * time.Second):
			b.Fatal("no keyframe relayed")
		}
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Nanoseconds())/1e3, "p50-µs")
	tr.Close()
}
