package room_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/rtc/codec"
	"github.com/beepvoice/router/stages"
)

// feedCase is one feed under test: who receives whom, on which client.
type feedCase struct {
	sub, pub string
	feed     *room.Feed
	client   *testpeer.Peer
}

// TestFeedsThreeParticipants: three participants each publish video and
// audio and each receives the other two on feeds. Every feed's video starts
// at a keyframe and decodes without error; its audio is continuous. Alice
// subscribes before the others publish, so feeds bound before and after
// their publisher's tracks exist are both covered.
func TestFeedsThreeParticipants(t *testing.T) {
	tests := []struct {
		name    string
		mime    string
		fixture func(testing.TB) string
		decode  func(testing.TB, []*rtp.Packet) (int, []string)
	}{
		{"VP8", webrtc.MimeTypeVP8, testmedia.VP8, testmedia.DecodeVP8},
		{"H264", webrtc.MimeTypeH264, testmedia.H264, testmedia.DecodeH264},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := testmedia.Frames(t, tt.fixture(t))
			ctx := deadline(t, 2*waitLong)
			m := newManager(t, rtc.Config{})
			ids := []string{"alice", "bob", "carol"}
			members := map[string]*member{}
			for _, id := range ids {
				members[id] = enter(t, m, "conv-1", id)
			}
			var feeds []*feedCase
			sub := func(s, p string) {
				f, err := members[s].Subscribe(members[p].Participant)
				if err != nil {
					t.Fatalf("%s subscribes to %s: %v", s, p, err)
				}
				feeds = append(feeds, &feedCase{sub: s, pub: p, feed: f, client: subscribe(t, ctx, f, subOptions{})})
			}
			publish(t, ctx, members["alice"].Participant, tt.mime, frames)
			sub("alice", "bob")
			sub("alice", "carol")
			publish(t, ctx, members["bob"].Participant, tt.mime, frames)
			publish(t, ctx, members["carol"].Participant, tt.mime, frames)
			sub("bob", "alice")
			sub("bob", "carol")
			sub("carol", "alice")
			sub("carol", "bob")

			for _, fc := range feeds {
				select {
				case <-fc.feed.Peer().Connected():
				case <-ctx.Done():
					t.Fatalf("feed %s←%s did not connect", fc.sub, fc.pub)
				}
			}
			for _, fc := range feeds {
				if err := fc.client.UntilMedia(ctx, 60, 50); err != nil {
					f, a := fc.client.Counts()
					t.Fatalf("feed %s←%s: %d video frames and %d audio packets, want 60 and 50", fc.sub, fc.pub, f, a)
				}
			}
			for _, fc := range feeds {
				name := fc.sub + "←" + fc.pub
				first, _, mime := fc.client.First()
				if !strings.EqualFold(mime, tt.mime) {
					t.Errorf("feed %s: video codec %s, want %s", name, mime, tt.mime)
				}
				if !codec.Keyframe(tt.mime, first.Payload) {
					t.Errorf("feed %s: the first video packet (seq %d) does not start a keyframe", name, first.SequenceNumber)
				}
				pkts := testpeer.ThroughMarker(fc.client.VideoPackets())
				n, errs := tt.decode(t, pkts)
				if n < 50 || len(errs) > 0 {
					t.Errorf("feed %s: %d frames decoded from %d packets, want ≥ 50; errors %q (router: %d received packets dropped for overload)",
						name, n, len(pkts), errs, m.Stats().Overload)
				}
				if err := audioContinuous(fc.client.AudioPackets()); err != nil {
					t.Errorf("feed %s: audio: %v", name, err)
				}
			}
			// Each participant was told that the other two published.
			for _, id := range ids {
				for _, other := range ids {
					if other != id && !members[id].waitEvent(deadline(t, waitLong), room.Published, members[other].Participant) {
						t.Errorf("%s was not told that %s published", id, other)
					}
				}
			}
		})
	}
}

// audioContinuous checks that audio sequence numbers follow each other and
// timestamps increase.
func audioContinuous(hs []*rtp.Packet) error {
	for i := 1; i < len(hs); i++ {
		prev, h := hs[i-1], hs[i]
		if h.SequenceNumber != prev.SequenceNumber+1 {
			return fmt.Errorf("packet %d: sequence number %d follows %d", i, h.SequenceNumber, prev.SequenceNumber)
		}
		if int32(h.Timestamp-prev.Timestamp) <= 0 {
			return fmt.Errorf("packet %d: timestamp %d follows %d", i, h.Timestamp, prev.Timestamp)
		}
	}
	return nil
}

// TestLateJoinerGetsKeyframe: a subscriber that joins a publisher already
// sending gets a keyframe at once: the router asks the publisher for one
// when the feed binds, and forwards from it. The first video packet
// arrives within a second of the feed connecting (the requirement).
func TestLateJoinerGetsKeyframe(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, waitLong)
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "alice")
	b := enter(t, m, "conv-1", "bob")
	pa := publish(t, ctx, a.Participant, webrtc.MimeTypeVP8, frames)
	if err := testutil.Until(ctx, func() bool { return pa.Media.FramesSent() >= 45 }); err != nil {
		t.Fatalf("alice sent %d frames, want 45", pa.Media.FramesSent())
	}
	f, err := b.Subscribe(a.Participant)
	if err != nil {
		t.Fatal(err)
	}
	// The router sends its PLI from the feed's Connected handler, before
	// Connected() is closed: the earliest it may go is when the answer is
	// applied, which subscribe does last.
	subscribed := time.Now()
	sb := subscribe(t, ctx, f, subOptions{})
	select {
	case <-f.Peer().Connected():
	case <-ctx.Done():
		t.Fatal("bob's feed did not connect")
	}
	connected := time.Now()
	if err := testutil.Until(ctx, func() bool { p, _, _ := sb.First(); return p != nil }); err != nil {
		t.Fatal("bob received no video")
	}
	first, firstAt, mime := sb.First()
	if !codec.Keyframe(mime, first.Payload) {
		t.Errorf("bob's first video packet (seq %d) does not start a keyframe", first.SequenceNumber)
	}
	if n := pa.Media.KeyRequestsBetween(subscribed, time.Now()); n == 0 {
		t.Errorf("alice got no keyframe request after bob subscribed (all requests: %v)", pa.Media.KeyRequests())
	}
	const within = time.Second
	gap := firstAt.Sub(connected)
	t.Logf("first video packet %v after the feed connected; alice sent %d frames before", gap.Round(time.Millisecond), pa.Media.FramesSent())
	if gap > within {
		t.Errorf("bob's first video packet came %v after his feed connected, want within %v", gap, within)
	}
}

// TestPLIFloodThrottled: a subscriber that sends a PLI every 10 ms costs
// the publisher at most one keyframe request per 500 ms.
func TestPLIFloodThrottled(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, waitLong)
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "alice")
	b := enter(t, m, "conv-1", "bob")
	pa := publish(t, ctx, a.Participant, webrtc.MimeTypeVP8, frames)
	f, err := b.Subscribe(a.Participant)
	if err != nil {
		t.Fatal(err)
	}
	sb := subscribe(t, ctx, f, subOptions{})
	if err := sb.UntilMedia(ctx, 1, 0); err != nil {
		t.Fatal("bob received no video")
	}
	ssrc := sb.VideoSSRC()

	const flood, every, interval = 2 * time.Second, 10 * time.Millisecond, rtc.DefaultKeyframeInterval
	before := m.Stats().PLIs
	start := time.Now()
	tick := time.NewTicker(every)
	sent := 0
	for time.Since(start) < flood {
		<-tick.C
		if err := sb.PC.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: ssrc}}); err != nil {
			t.Fatalf("write PLI: %v", err)
		}
		sent++
	}
	tick.Stop()
	// Once the router has counted the flood, it has sent every keyframe
	// request the flood caused.
	testutil.Eventually(t, waitLong, "the router to count 100 PLIs", func() bool { return m.Stats().PLIs-before >= 100 })
	end := time.Now()
	got := pa.Media.KeyRequestsBetween(start, end)
	most := int(end.Sub(start)/interval) + 2
	t.Logf("%d PLIs sent in %v, %d counted; alice got %d keyframe requests (router: %d in all)",
		sent, flood, m.Stats().PLIs-before, got, m.Stats().KeyframeRequests)
	if got > most {
		t.Errorf("alice got %d keyframe requests in %v, want at most %d", got, end.Sub(start).Round(time.Millisecond), most)
	}
	if got < 2 {
		t.Errorf("alice got %d keyframe requests during the flood, want at least 2", got)
	}
}

// TestVideoLossRecoveredByNACK: with 5% of the video RTP to a subscriber
// lost, the subscriber's NACKs get the packets resent, and the video
// decodes without a gap.
func TestVideoLossRecoveredByNACK(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, 2*waitLong)
	port := testutil.FreeUDPPort(t)
	m := newManager(t, rtc.Config{UDPPort: port})
	relay := testutil.NewRelay(t, port, testutil.RelayOptions{Loss: 0.05, Downlink: true, PayloadTypes: []uint8{uint8(codec.VP8.PayloadType)}})
	a := enter(t, m, "conv-1", "alice")
	b := enter(t, m, "conv-1", "bob")
	publish(t, ctx, a.Participant, webrtc.MimeTypeVP8, frames)
	f, err := b.Subscribe(a.Participant)
	if err != nil {
		t.Fatal(err)
	}
	sb := subscribe(t, ctx, f, viaRelay(port, relay))
	if err := testutil.Until(ctx, func() bool {
		n, _ := sb.Counts()
		dropped, _ := relay.Counts()
		return n >= 90 && dropped >= 5
	}); err != nil {
		n, _ := sb.Counts()
		dropped, passed := relay.Counts()
		t.Fatalf("bob got %d frames; the relay dropped %d video packets and passed %d", n, dropped, passed)
	}
	// Packets up to the highest sequence number received by now have had
	// their chance to be lost; give their NACKs time (about 20 frames) to
	// bring them back, then judge only them.
	cutoff := highest(sb.VideoPackets())
	n, _ := sb.Counts()
	if err := sb.UntilMedia(ctx, n+20, 0); err != nil {
		t.Fatal("bob's video stopped")
	}
	all := sb.VideoPackets()
	sorted := slices.DeleteFunc(byExtendedSeq(all), func(p extPacket) bool { return p.ext > cutoff })
	if len(sorted) == 0 {
		t.Fatal("no video packet up to the cut")
	}
	pkts := testpeer.ThroughMarker(sorted.packets())
	dropped, passed := relay.Counts()
	s := m.Stats()
	t.Logf("relay dropped %d video packets, passed %d; router got %d NACKs, resent %d; bob got %d packets, %d distinct up to the cut",
		dropped, passed, s.NACKs, s.Resent, len(all), len(pkts))
	if dropped == 0 {
		t.Fatal("the relay dropped nothing: the test proves nothing")
	}
	if s.NACKs == 0 || s.Resent == 0 {
		t.Errorf("router counted %d NACKs and resent %d packets, want both > 0", s.NACKs, s.Resent)
	}
	// Tell the packets the relay dropped and NACKs did not bring back from
	// those the router never sent.
	got := map[uint64]bool{}
	for _, p := range sorted {
		got[p.ext] = true
	}
	relayLost := map[uint16]bool{}
	for _, seq := range relay.Dropped() {
		relayLost[seq] = true
	}
	var unrecovered, neverSent []uint16
	for ext := sorted[0].ext; ext <= cutoff; ext++ {
		if seq := uint16(ext); !got[ext] {
			if relayLost[seq] {
				unrecovered = append(unrecovered, seq)
			} else {
				neverSent = append(neverSent, seq)
			}
		}
	}
	if len(unrecovered) > 0 {
		t.Errorf("packets dropped by the relay and never resent: %v", unrecovered)
	}
	if len(neverSent) > 0 {
		t.Errorf("packets the router never sent to bob (not dropped by the relay): %v; router dropped %d received packets for overload",
			neverSent, s.Overload)
	}
	if n, errs := testmedia.DecodeVP8(t, pkts); len(errs) > 0 || n < 60 {
		t.Errorf("%d frames decoded from %d packets, want ≥ 60; errors %q", n, len(pkts), errs)
	}
}

// extPacket is a received packet with its extended sequence number.
type extPacket struct {
	ext uint64
	*rtp.Packet
}

type extPackets []extPacket

func (ps extPackets) packets() []*rtp.Packet {
	out := make([]*rtp.Packet, len(ps))
	for i, p := range ps {
		out[i] = p.Packet
	}
	return out
}

// byExtendedSeq extends the sequence numbers of pkts (in arrival order),
// drops duplicates and sorts by extended number.
func byExtendedSeq(pkts []*rtp.Packet) extPackets {
	var out extPackets
	seen := map[uint64]bool{}
	var max uint64
	for _, p := range pkts {
		ext := uint64(1<<16) | uint64(p.SequenceNumber)
		if max != 0 {
			ext = max + uint64(int64(int16(p.SequenceNumber-uint16(max))))
		}
		if ext > max {
			max = ext
		}
		if !seen[ext] {
			seen[ext] = true
			out = append(out, extPacket{ext, p})
		}
	}
	slices.SortFunc(out, func(a, b extPacket) int { return int(int64(a.ext - b.ext)) })
	return out
}

// highest returns the highest extended sequence number of pkts.
func highest(pkts []*rtp.Packet) uint64 {
	ps := byExtendedSeq(pkts)
	if len(ps) == 0 {
		return 0
	}
	return ps[len(ps)-1].ext
}

// TestFeedEndsWhenPublisherLeaves: when the publisher leaves, the
// subscriber is told, the feed ends and its connection closes.
func TestFeedEndsWhenPublisherLeaves(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, waitLong)
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "alice")
	b := enter(t, m, "conv-1", "bob")
	publish(t, ctx, a.Participant, webrtc.MimeTypeVP8, frames)
	publish(t, ctx, b.Participant, webrtc.MimeTypeVP8, frames)
	f, err := b.Subscribe(a.Participant)
	if err != nil {
		t.Fatal(err)
	}
	sb := subscribe(t, ctx, f, subOptions{})
	if err := sb.UntilMedia(ctx, 1, 1); err != nil {
		t.Fatal("bob received nothing from alice")
	}
	if f.Err() != nil {
		t.Fatalf("live feed has Err %v", f.Err())
	}
	if n := m.Stats().Peers; n != 3 {
		t.Fatalf("%d peers, want 3 (two publishers, one feed)", n)
	}

	a.Leave()
	if !b.waitEvent(ctx, room.Left, a.Participant) {
		t.Fatal("bob was not told that alice left")
	}
	select {
	case <-f.Done():
	case <-ctx.Done():
		t.Fatal("the feed did not end")
	}
	if err := f.Err(); err == nil || !strings.Contains(err.Error(), "publisher left") {
		t.Errorf("feed Err %v, want publisher left", err)
	}
	select {
	case <-f.Peer().Done():
	case <-ctx.Done():
		t.Fatal("the feed's peer was not closed")
	}
	testutil.Eventually(t, waitLong, "one peer (bob's publisher) to remain", func() bool { return m.Stats().Peers == 1 })
}

// TestSubscribeErrors: feeds of oneself, of another conversation, of or
// for a participant who left are refused, and so is a second participant
// with a taken id.
func TestSubscribeErrors(t *testing.T) {
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "alice")
	b := enter(t, m, "conv-1", "bob")
	c := enter(t, m, "conv-2", "carol")

	if _, err := a.Subscribe(a.Participant); err == nil {
		t.Error("alice subscribed to herself")
	}
	if _, err := a.Subscribe(c.Participant); err == nil {
		t.Error("alice subscribed to carol of another conversation")
	}
	if _, err := m.Enter("conv-1", room.Identity{ID: "alice", Claim: claim.Claim{UserID: "alice", ClientID: "alice-2"}}, nil); !errors.Is(err, room.ErrParticipantExists) {
		t.Errorf("second alice in conv-1: %v, want ErrParticipantExists", err)
	}
	b.Leave()
	if _, err := b.Subscribe(a.Participant); err == nil {
		t.Error("bob subscribed after leaving")
	}
	if _, err := a.Subscribe(b.Participant); err == nil {
		t.Error("alice subscribed to bob, who left")
	}
	if _, err := b.Publisher(); !errors.Is(err, room.ErrLeft) {
		t.Errorf("bob's publisher after leaving: %v, want ErrLeft", err)
	}
	// The refused feeds' peers are closed, not leaked.
	testutil.Eventually(t, waitLong, "no peer left", func() bool { return m.Stats().Peers == 0 })
	// bob's id is free again.
	b2, err := m.Enter("conv-1", room.Identity{ID: "bob", Claim: claim.Claim{UserID: "bob", ClientID: "bob-2"}}, nil)
	if err != nil {
		t.Fatalf("bob enters again: %v", err)
	}
	b2.Leave()
}

// TestFeedParticipantLeavesAfterClose: a front-end whose session ends after
// the Manager has closed (a server shutting down) calls Leave, which must
// just return. Manager.Close does the same through the publisher peers it
// closes (publisher.Closed runs Leave on a goroutine), racing its own loop
// that stops the conversations.
func TestFeedParticipantLeavesAfterClose(t *testing.T) {
	reg := pipeline.NewRegistry()
	stages.Register(reg)
	cfg, err := reg.Config(stages.GateKind, stages.ForwarderKind)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := reg.Build(cfg, pipeline.Env{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	// Not newManager: a Leave that panics holds the Manager's lock, and a
	// second Close would wait for it for ever.
	m, err := room.New(room.Config{Media: rtc.Config{ICEIPs: []net.IP{testpeer.Loopback}}, Sink: p, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Enter("conv-1", room.Identity{ID: "alice", Claim: claim.Claim{UserID: "alice", ClientID: "alice-1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r != nil {
			t.Errorf("Leave after the Manager closed panicked: %v", r)
		}
	}()
	a.Leave()
}
