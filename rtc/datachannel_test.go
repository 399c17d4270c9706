package rtc

import (
	"context"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// TestNegotiatedDataChannel: a client offers audio and two negotiated data
// channels (as Arbiter's does: chat id 100, features id 110) without
// candidates in its SDP, trickling them; the router's channels open and
// messages go both ways on the right channel. A channel asked for after the
// offer is refused.
func TestNegotiatedDataChannel(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	client := loopbackClient(t)
	if _, err := client.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendrecv}); err != nil {
		t.Fatal(err)
	}
	type channel struct {
		label string
		id    uint16
	}
	chans := []channel{{"chat", 100}, {"features", 110}}
	negotiated := true
	clientDC := map[string]*webrtc.DataChannel{}
	got := make(chan string, 4)
	opened := make(chan string, 4)
	for _, c := range chans {
		id := c.id
		dc, err := client.CreateDataChannel(c.label, &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &id})
		if err != nil {
			t.Fatal(err)
		}
		label := c.label
		dc.OnOpen(func() { opened <- "client " + label })
		dc.OnMessage(func(m webrtc.DataChannelMessage) { got <- "client " + label + ": " + string(m.Data) })
		clientDC[c.label] = dc
	}

	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	routerDC := map[string]*webrtc.DataChannel{}
	for _, c := range chans {
		dc, err := p.NegotiatedDataChannel(c.label, c.id)
		if err != nil {
			t.Fatal(err)
		}
		label := c.label
		dc.OnOpen(func() { opened <- "router " + label })
		dc.OnMessage(func(m webrtc.DataChannelMessage) { got <- "router " + label + ": " + string(m.Data) })
		routerDC[c.label] = dc
	}
	p.OnCandidate(func(ci webrtc.ICECandidateInit) { _ = client.AddICECandidate(ci) })
	client.OnICECandidate(func(c *webrtc.ICECandidate) {
		if c != nil {
			if err := p.AddCandidate(c.ToJSON()); err != nil {
				t.Errorf("router refused the client's candidate: %v", err)
			}
		}
	})
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	answer, err := p.Answer(offer.SDP) // no candidates: they trickle
	if err != nil {
		t.Fatal(err)
	}
	if err := client.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.NegotiatedDataChannel("late", 120); err == nil {
		t.Error("a data channel made after the offer was accepted")
	}
	for range 2 * len(chans) {
		select {
		case <-opened:
		case <-ctx.Done():
			t.Fatal("the data channels did not open")
		}
	}
	for _, c := range chans {
		if err := clientDC[c.label].SendText("to router"); err != nil {
			t.Fatal(err)
		}
		if err := routerDC[c.label].SendText("to client"); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]bool{"client chat: to client": true, "client features: to client": true, "router chat: to router": true, "router features: to router": true}
	for len(want) > 0 {
		select {
		case m := <-got:
			if !want[m] {
				t.Errorf("unexpected message %q", m)
			}
			delete(want, m)
		case <-ctx.Done():
			t.Fatalf("messages missing: %v", want)
		}
	}
	p.Close()
	if _, err := p.NegotiatedDataChannel("closed", 130); err == nil {
		t.Error("a data channel made on a closed peer was accepted")
	}
}
