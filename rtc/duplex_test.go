package rtc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// TestAddSendRecvTrack: send-receive m-lines are offered sendrecv, with
// the router's SSRC, before the offer only, video on a video peer only.
func TestAddSendRecvTrack(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	audioOnly, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "a"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer audioOnly.Close()
	if _, err := audioOnly.AddSendRecvTrack(webrtc.RTPCodecTypeVideo); err == nil {
		t.Error("video on a peer without video was accepted")
	}
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{Video: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		if _, err := p.AddSendRecvTrack(k); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offer, err := p.Offer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(offer, "a=sendrecv"); n != 2 {
		t.Errorf("%d sendrecv m-lines, want 2:\n%s", n, offer)
	}
	for i, m := range strings.Split(offer, "m=")[1:] {
		if !strings.Contains(m, "a=ssrc:") {
			t.Errorf("m-section %d has no a=ssrc", i)
		}
	}
	if len(p.DownTracks()) != 2 {
		t.Errorf("%d down-tracks, want 2", len(p.DownTracks()))
	}
	if _, err := p.AddSendRecvTrack(webrtc.RTPCodecTypeAudio); err == nil {
		t.Error("a track added after the offer was accepted")
	}
}

// TestResetConnectTimeout: the connect timeout counts again from the
// reset, with the new duration.
func TestResetConnectTimeout(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4, ConnectTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.ResetConnectTimeout(50 * time.Millisecond)
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the peer did not close at its reset deadline")
	}
	if !errors.Is(p.Err(), ErrConnectTimeout) {
		t.Errorf("closed for %v, want ErrConnectTimeout", p.Err())
	}
	p.ResetConnectTimeout(0) // a closed peer: nothing happens
}
