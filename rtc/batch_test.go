package rtc

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
)

// TestFanoutOneSendmmsg builds the UDP_PORT path as a connected Engine
// does — the Engine's shared socket, and for each of n peers the route
// updateRoute makes of its selected candidate pair — and writes packets
// to the n down-tracks: each packet's n copies leave with one sendmmsg,
// and every receiver gets every packet, in order, decrypting with its
// peer's keys. (Each peer's route used to wrap the socket in a writer of
// its own, and the SendBuffer flushed at every change of writer: one
// system call per copy.)
func TestFanoutOneSendmmsg(t *testing.T) {
	e, err := NewEngine(Config{
		UDPPort: testutil.FreeUDPPort(t), ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)},
		Logger: testutil.Logger(t, 8),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	e.socks.mu.Lock()
	var shared netip.AddrPort
	for a := range e.socks.byAddr {
		shared = a
	}
	n := len(e.socks.byAddr)
	e.socks.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d sockets open, want the one shared socket", n)
	}

	const peers = 20
	src := NewUpTrack(claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	var downs []*DownTrack
	var recvs []*net.UDPConn
	var decs []*srtp.Context
	for i := range peers {
		recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { recv.Close() })
		recvs = append(recvs, recv)
		keys := &srtpKeys{key: bytes.Repeat([]byte{byte(i + 1)}, 16), salt: bytes.Repeat([]byte{byte(i + 7)}, 12), profile: srtp.ProtectionProfileAeadAes128Gcm}
		dec, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
		if err != nil {
			t.Fatal(err)
		}
		decs = append(decs, dec)
		sealer, err := newGCMSealer(*keys)
		if err != nil {
			t.Fatal(err)
		}
		p := &Peer{Claim: claim.Claim{UserID: "u" + strconv.Itoa(i), ClientID: "d"}, e: e, keys: keys, sealer: sealer}
		p.pair = &webrtc.ICECandidatePair{
			Local:  &webrtc.ICECandidate{Protocol: webrtc.ICEProtocolUDP, Typ: webrtc.ICECandidateTypeHost, Address: shared.Addr().String(), Port: shared.Port()},
			Remote: &webrtc.ICECandidate{Protocol: webrtc.ICEProtocolUDP, Typ: webrtc.ICECandidateTypeHost, Address: "127.0.0.1", Port: uint16(recv.LocalAddr().(*net.UDPAddr).Port)},
		}
		p.egressMu.Lock()
		p.updateRoute()
		p.egressMu.Unlock()
		if eg := p.egress.Load(); eg == nil || eg.batch == nil {
			t.Fatalf("peer %d: no batched route on the shared socket", i)
		}
		d := newDownTrack(p, webrtc.RTPCodecTypeAudio, 0)
		if _, err := d.Bind(boundContext{ssrc: webrtc.SSRC(5000 + i)}); err != nil {
			t.Fatal(err)
		}
		d.SetSource(src)
		downs = append(downs, d)
	}

	const packets = 5
	buf := src.SendBuffer()
	for k := range packets {
		before := buf.calls
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: uint16(100 + k), Timestamp: uint32(k * 960)}, Payload: []byte{0xf8, byte(k), 1, 2, 3}}
		written, failed, err := Fanout(downs, buf, src, p, 0x85, true, time.Now().UnixNano())
		if written != peers || failed != 0 || err != nil {
			t.Fatalf("packet %d: %d written, %d failed, %v", k, written, failed, err)
		}
		if calls := buf.calls - before; calls != 1 {
			t.Errorf("packet %d: %d sendmmsg for a fan-out of %d copies, want 1", k, calls, peers)
		}
	}
	for i, recv := range recvs {
		for k := range packets {
			plain, err := decs[i].DecryptRTP(nil, receive(t, recv), nil)
			if err != nil {
				t.Fatalf("receiver %d packet %d: %v", i, k, err)
			}
			var got rtp.Packet
			if err := got.Unmarshal(plain); err != nil {
				t.Fatal(err)
			}
			if got.SSRC != uint32(5000+i) || got.Payload[1] != byte(k) || got.SequenceNumber != uint16(100+k) {
				t.Errorf("receiver %d datagram %d: ssrc %d seq %d payload %x", i, k, got.SSRC, got.SequenceNumber, got.Payload)
			}
		}
	}
}
