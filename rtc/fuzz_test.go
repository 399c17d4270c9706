package rtc

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"

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

// FuzzFeedback takes arbitrary RTCP from a subscriber through a direct
// down-track that has sent 64 packets: NACKs are answered from the
// source's cache, at most once per packet per nackWindow; nothing panics.
// (That RTCP naming unknown SSRCs cannot grow pion's state is
// TestRTCPNamingUnknownSSRCs.)
func FuzzFeedback(f *testing.F) {
	for _, pkts := range [][]rtcp.Packet{
		{&rtcp.TransportLayerNack{MediaSSRC: 4242, Nacks: []rtcp.NackPair{{PacketID: 30, LostPackets: 0xffff}}}},
		{&rtcp.PictureLossIndication{MediaSSRC: 4242}},
		{&rtcp.ReceiverReport{SSRC: 1, Reports: []rtcp.ReceptionReport{{SSRC: 4242}, {SSRC: 7}}}, &rtcp.TransportLayerNack{MediaSSRC: 4242, Nacks: []rtcp.NackPair{{PacketID: 63}}}},
		{&rtcp.FullIntraRequest{MediaSSRC: 4242, FIR: []rtcp.FIREntry{{SSRC: 4242}}}},
	} {
		b, err := rtcp.Marshal(pkts)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x81, 205, 0xff, 0xff, 0, 0, 0, 1})
	d, up, _, _ := directDownTrack(f, srtp.ProtectionProfileAeadAes128Gcm)
	const sent = 64
	for i := range sent {
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: uint16(i), Timestamp: uint32(i * 960)}, Payload: bytes.Repeat([]byte{1}, 80)}
		raw, err := p.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		up.Cache(raw)
		if ok, err := d.Write(up.SendBuffer(), up, p, 0x85, true, time.Now().UnixNano()); !ok || err != nil {
			f.Fatalf("packet %d not written: %v %v", i, ok, err)
		}
	}
	var c counters
	var seqs []uint16
	f.Fuzz(func(t *testing.T, b []byte) {
		start, before := time.Now(), c.resent.Load()
		seqs = d.feedback(b, &c, seqs)
		windows := uint64(time.Since(start)/nackWindow) + 1
		if got := c.resent.Load() - before; got > sent*windows {
			t.Fatalf("%d retransmissions of %d packets sent", got, sent)
		}
	})
}
