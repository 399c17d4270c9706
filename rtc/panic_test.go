package rtc

import (
	"net"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// panicWriter is a bound down-track's writer that panics: a bug on the
// packet path, which no real part can be made to produce on demand.
type panicWriter struct{}

func (panicWriter) WriteRTP(*rtp.Header, []byte) (int, error) { panic("bug in a writer") }
func (panicWriter) Write([]byte) (int, error)                 { panic("bug in a writer") }

// closedWithin reports whether p closes within d.
func closedWithin(p *Peer, d time.Duration) bool {
	select {
	case <-p.Done():
		return true
	case <-time.After(d):
		return false
	}
}

// TestPanicClosesOnlyItsPeer: a panic while writing one subscriber's copy,
// or in one peer's RTCP reader, closes that peer; the fan-out goes on with
// the others and their peers stay up.
func TestPanicClosesOnlyItsPeer(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(t.Context())
	src := NewUpTrack(claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	var peers []*Peer
	var downs []*DownTrack
	for i, name := range []string{"a", "b", "c"} {
		p, err := e.NewPeer(claim.Claim{UserID: name, ClientID: name + "-phone"}, nopHandler{}, PeerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d := newDownTrack(p, webrtc.RTPCodecTypeAudio, 0)
		if _, err := d.Bind(boundContext{ssrc: webrtc.SSRC(100 + i)}); err != nil {
			t.Fatal(err)
		}
		d.SetSource(src)
		peers, downs = append(peers, p), append(downs, d)
	}
	downs[1].writer = panicWriter{}

	pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: 7}, Payload: []byte{0xf8, 0xff, 0xfe}}
	written, failed, _ := Fanout(downs, src.SendBuffer(), src, pkt, 0, false, time.Now().UnixNano())
	if written != 2 || failed != 1 {
		t.Errorf("written %d, failed %d; want 2 and 1", written, failed)
	}
	if !closedWithin(peers[1], 5*time.Second) {
		t.Fatal("the peer whose copy panicked is still open")
	}
	for _, i := range []int{0, 2} {
		if closedWithin(peers[i], 0) {
			t.Fatalf("peer %d closed for another peer's panic", i)
		}
	}
	// The next packet still reaches the others.
	pkt.SequenceNumber++
	if written, _, _ := Fanout(downs, src.SendBuffer(), src, pkt, 0, false, time.Now().UnixNano()); written != 2 {
		t.Errorf("second packet written to %d down-tracks, want 2", written)
	}

	// An RTCP reader runs guarded the same way.
	peers[0].guard("RTCP reader", func() { panic("bug in an RTCP reader") })
	if !closedWithin(peers[0], 5*time.Second) {
		t.Fatal("the peer whose RTCP reader panicked is still open")
	}
	if closedWithin(peers[2], 0) {
		t.Fatal("peer 2 closed for another peer's panic")
	}
}
