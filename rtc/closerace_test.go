package rtc

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
)

// TestCloseDuringNegotiationReleasesAll: a peer closed at any stage of its
// negotiation (before, during or after Answer and its ICE gathering), as a
// device that replaces itself does, releases its sockets and goroutines.
func TestCloseDuringNegotiationReleasesAll(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(t.Context())
	var m webrtc.MediaEngine
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	client, err := webrtc.NewAPI(webrtc.WithMediaEngine(&m)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	client.Close()
	base := runtime.NumGoroutine()
	const n = 300
	var wg sync.WaitGroup
	for i := range n {
		p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Answer(offer.SDP); err == nil {
				p.WaitGathered(t.Context())
			}
		}()
		// Close at every stage: at once, while answering, after.
		if i%3 == 1 {
			runtime.Gosched()
		} else if i%3 == 2 {
			time.Sleep(time.Duration(i%7) * 100 * time.Microsecond) // spread the race; not synchronisation
		}
		p.Close()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := testutil.Until(ctx, func() bool { return e.socks.count() == 0 }); err != nil {
		t.Fatalf("%d sockets of %d closed peers still open", e.socks.count(), n)
	}
	testutil.Eventually(t, 20*time.Second, "the closed peers' goroutines to end", func() bool {
		return runtime.NumGoroutine() <= base+5
	})
	if s := e.Stats(); s.Peers != 0 {
		t.Errorf("%d peers left", s.Peers)
	}
}
