package testpeer_test

import (
	"context"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testutil"
)

func TestMain(m *testing.M) { testpeer.VerifyTestMain(m) }

// connect adds pub's tracks on sendonly m-lines, offers them to sub, applies
// sub's answer, and starts pub's Media once connected.
func connect(t *testing.T, ctx context.Context, pub, sub *testpeer.Peer) {
	t.Helper()
	if err := pub.AddTracks(webrtc.RTPTransceiverDirectionSendonly); err != nil {
		t.Fatal(err)
	}
	offer, err := pub.PC.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	offerSDP, err := testpeer.Gather(ctx, pub.PC, offer)
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offerSDP}); err != nil {
		t.Fatal(err)
	}
	answer, err := sub.PC.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	answerSDP, err := testpeer.Gather(ctx, sub.PC, answer)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answerSDP}); err != nil {
		t.Fatal(err)
	}
	pub.Media.Start(pub.Connected())
}

// TestPeerToPeer: a sending Peer offers its VP8 and Opus to a receiving
// Peer, both on loopback; the receiver records whole frames that decode,
// and audio; a PLI it sends is noted by the sender as a keyframe request.
func TestPeerToPeer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	frames := testmedia.Frames(t, testmedia.VP8(t))
	pub := testpeer.OpenMedia(t, testpeer.MediaConfig{Frames: frames, StreamID: "pub"})
	sub := testpeer.Open(t, testpeer.Options{})

	connect(t, ctx, pub, sub)

	select {
	case <-sub.Frame():
	case <-ctx.Done():
		t.Fatal("no whole video frame received")
	}
	if err := sub.UntilMedia(ctx, 30, 25); err != nil {
		f, a := sub.Counts()
		t.Fatalf("received %d frames and %d audio packets, want 30 and 25", f, a)
	}
	if got := sub.VideoMime(); got != webrtc.MimeTypeVP8 {
		t.Errorf("video codec %s, want %s", got, webrtc.MimeTypeVP8)
	}
	if n, errs := testmedia.DecodeVP8(t, testpeer.ThroughMarker(sub.VideoPackets())); n < 30 || len(errs) > 0 {
		t.Errorf("%d frames decoded, errors %q; want ≥ 30 and none", n, errs)
	}
	if got := len(sub.AudioPackets()); got < 25 {
		t.Errorf("%d audio packets kept, want ≥ 25", got)
	}

	before := len(pub.Media.KeyRequests())
	if err := sub.PC.WriteRTCP([]rtcp.Packet{&rtcp.PictureLossIndication{MediaSSRC: sub.VideoSSRC()}}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the sender to note the PLI", func() bool { return len(pub.Media.KeyRequests()) > before })
	if pub.Media.FramesSent() == 0 || pub.Media.AudioSent() == 0 {
		t.Errorf("sent %d frames and %d audio frames", pub.Media.FramesSent(), pub.Media.AudioSent())
	}
}

// TestCountOnly: a CountOnly Peer counts what it receives and keeps no
// packet.
func TestCountOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	frames := testmedia.Frames(t, testmedia.VP8(t))
	pub := testpeer.OpenMedia(t, testpeer.MediaConfig{Frames: frames, AudioFirst: true})
	sub := testpeer.Open(t, testpeer.Options{API: testpeer.API(t), CountOnly: true})
	connect(t, ctx, pub, sub)
	if err := sub.UntilMedia(ctx, 10, 10); err != nil {
		f, a := sub.Counts()
		t.Fatalf("received %d frames and %d audio packets, want 10 and 10", f, a)
	}
	if v, a := len(sub.VideoPackets()), len(sub.AudioPackets()); v != 0 || a != 0 {
		t.Errorf("kept %d video and %d audio packets, want none", v, a)
	}
	if p, _, _ := sub.First(); p != nil {
		t.Error("First returned a packet though none is kept")
	}
}
