package rtc

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
)

// nopHandler refuses tracks and ignores the rest.
type nopHandler struct{}

func (nopHandler) Connected(*Peer)                       {}
func (nopHandler) Closed(*Peer)                          {}
func (nopHandler) Published(*UpTrack) (TrackSink, error) { return nil, errors.New("unused") }
func (nopHandler) Unpublished(*UpTrack)                  {}

// FuzzAnswer takes arbitrary offers through the whole of Peer.Answer: our
// checks, pion's SetRemoteDescription, the down-tracks and the answer. Errors are
// fine; panics, leaks and answers to refused offers are not. ICE gathers on
// loopback only.
func FuzzAnswer(f *testing.F) {
	f.Add(offerHead + audio("0", "sendrecv", "opus/48000/2"))
	f.Add(offerHead + "a=group:BUNDLE 0 1\r\n" + audio("0", "sendonly", "opus/48000/2") + audio("1", "recvonly", "opus/48000/2"))
	f.Add(offerHead + audio("0", "inactive", "opus/48000/2") + "a=fingerprint:sha-256 00\r\n")
	m, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}, ConnectTimeout: time.Minute})
	if err != nil {
		f.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = m.Close(ctx)
	}()
	f.Fuzz(func(t *testing.T, offer string) {
		p, err := m.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		answer, err := p.Answer(offer)
		if err != nil && answer != "" {
			t.Fatalf("refused offer got an answer")
		}
		if err == nil && len(p.DownTracks()) > DefaultMaxDownTracks {
			t.Fatalf("%d down-tracks", len(p.DownTracks()))
		}
	})
}
