package rtc

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// TestSocketLimit: with MaxSockets, new peers are refused (ErrSocketLimit,
// counted) before their ICE sockets would pass it; the peers open keep
// their sockets, and a closed one makes room for a new one.
func TestSocketLimit(t *testing.T) {
	const max = 3 // one socket per peer on 127.0.0.1
	e, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}, MaxSockets: max})
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

	newPeer := func(i int) (*Peer, error) {
		p, err := e.NewPeer(claim.Claim{UserID: fmt.Sprintf("u%d", i), ClientID: "c"}, nopHandler{}, PeerOptions{})
		if err != nil {
			return nil, err
		}
		if _, err := p.Answer(offer.SDP); err != nil {
			t.Fatalf("peer %d: answer: %v", i, err)
		}
		p.WaitGathered(t.Context())
		return p, nil
	}
	var peers []*Peer
	for i := range max {
		p, err := newPeer(i)
		if err != nil {
			t.Fatalf("peer %d of %d refused: %v", i, max, err)
		}
		peers = append(peers, p)
	}
	if n := e.socks.open(); n != max {
		t.Fatalf("%d sockets open, want %d", n, max)
	}
	if _, err := newPeer(max); !errors.Is(err, ErrSocketLimit) {
		t.Fatalf("peer past the limit: %v, want ErrSocketLimit", err)
	}
	if n := e.socks.open(); n != max {
		t.Errorf("%d sockets open after the refusal, want %d", n, max)
	}
	if r := e.Refusals().Sockets; r != 1 {
		t.Errorf("%d refusals counted, want 1", r)
	}
	peers[0].Close()
	p, err := newPeer(max + 1)
	if err != nil {
		t.Fatalf("refused after a peer closed: %v", err)
	}
	p.Close()
}
