package rtc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"
	"golang.org/x/net/ipv4"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/stamp"
)

// directDownTrack returns a down-track bound like pion binds it, whose peer
// sends directly from a loopback socket to the returned receiving socket
// with profile's keys, and the up-track that is its source.
func directDownTrack(t testing.TB, profile srtp.ProtectionProfile) (*DownTrack, *UpTrack, *net.UDPConn, *egress) {
	t.Helper()
	e, recv := directRoute(t, profile)
	tr := NewUpTrack(claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	p := &Peer{Claim: claim.Claim{UserID: "listener", ClientID: "d"}}
	p.egress.Store(e)
	s := newDownTrack(p, webrtc.RTPCodecTypeAudio, 0)
	if _, err := s.Bind(boundContext{ssrc: 4242}); err != nil {
		t.Fatal(err)
	}
	s.SetSource(tr)
	return s, tr, recv, e
}

// directRoute returns a direct egress path with profile's keys from a
// loopback socket to the returned receiving one.
func directRoute(t testing.TB, profile srtp.ProtectionProfile) (*egress, *net.UDPConn) {
	t.Helper()
	keyLen, err := profile.KeyLen()
	if err != nil {
		t.Fatal(err)
	}
	saltLen, err := profile.SaltLen()
	if err != nil {
		t.Fatal(err)
	}
	send, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { send.Close(); recv.Close() })
	keys := srtpKeys{key: bytes.Repeat([]byte{7}, keyLen), salt: bytes.Repeat([]byte{9}, saltLen), profile: profile}
	return testEgress(keys, send, recv.LocalAddr().(*net.UDPAddr).AddrPort()), recv
}

// testEgress returns a peer's direct path with keys from conn to to, as
// startEgress makes it: with the peer's AES-GCM or AES-CM sealer, or none
// for another profile.
func testEgress(keys srtpKeys, conn *net.UDPConn, to netip.AddrPort) *egress {
	sealer, _ := newGCMSealer(keys)
	cm, _ := newCMSealer(keys)
	return &egress{srtpKeys: keys, sealer: sealer, cm: cm, conn: conn, to: to}
}

// loopbackEgress returns a batched (sendmmsg) AES-GCM egress path to a
// loopback socket that a goroutine drains until the benchmark ends.
func loopbackEgress(b *testing.B) *egress {
	e, recv := directRoute(b, srtp.ProtectionProfileAeadAes128Gcm)
	e.batch = ipv4.NewPacketConn(e.conn)
	e.addr = net.UDPAddrFromAddrPort(e.to)
	drain(b, recv)
	return e
}

// drain reads and drops what reaches conn until the test or benchmark ends.
func drain(b testing.TB, conn *net.UDPConn) {
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		buf := make([]byte, 1500)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() { conn.Close(); <-drained })
}

// receive reads one datagram from conn within a second.
func receive(t *testing.T, conn *net.UDPConn) []byte {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1500)
	n, err := conn.Read(b)
	if err != nil {
		t.Fatalf("no packet: %v", err)
	}
	return b[:n]
}

// TestDirectEgress checks, for each SRTP profile the router accepts, that
// what a down-track encrypts in place and sends decrypts with the same keys
// to the rewritten packet, and that a NACK gets the very same bytes again,
// rebuilt from the up-track's cache and the down-track's history.
func TestDirectEgress(t *testing.T) {
	for _, tc := range []struct {
		name    string
		profile srtp.ProtectionProfile
	}{
		{"AEAD_AES_128_GCM", srtp.ProtectionProfileAeadAes128Gcm},
		{"AEAD_AES_256_GCM", srtp.ProtectionProfileAeadAes256Gcm},
		{"AES128_CM_HMAC_SHA1_80", srtp.ProtectionProfileAes128CmHmacSha1_80},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, tr, recv, e := directDownTrack(t, tc.profile)
			dec, err := srtp.CreateContext(e.key, e.salt, e.profile)
			if err != nil {
				t.Fatal(err)
			}
			var sent [][]byte
			for i := 0; i < 5; i++ {
				payload := bytes.Repeat([]byte{byte(i + 1)}, 60+i*20)
				p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: uint16(65533 + i), Timestamp: uint32(i * 960)}, Payload: payload}
				raw, err := p.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				tr.Cache(raw) // as the track's reader does: NACKs are answered from it
				ok, err := s.Write(tr.SendBuffer(), tr, p, 0x85, true, time.Now().UnixNano())
				if !ok || err != nil {
					t.Fatalf("packet %d not written: %v %v", i, ok, err)
				}
				b := receive(t, recv)
				sent = append(sent, b)
				plain, err := dec.DecryptRTP(nil, b, nil)
				if err != nil {
					t.Fatalf("packet %d does not decrypt: %v", i, err)
				}
				var got rtp.Packet
				if err := got.Unmarshal(plain); err != nil {
					t.Fatal(err)
				}
				if got.SSRC != 4242 || got.PayloadType != 111 || !bytes.Equal(got.Payload, payload) {
					t.Errorf("packet %d: ssrc %d pt %d payload %d bytes, want 4242, 111, %d bytes", i, got.SSRC, got.PayloadType, len(got.Payload), len(payload))
				}
				if lv := got.GetExtension(1); len(lv) != 1 || lv[0] != 0x85 {
					t.Errorf("packet %d: audio level %x, want 85", i, lv)
				}
				if want := uint16(65533 + i); got.SequenceNumber != want {
					t.Errorf("packet %d: sequence number %d, want %d", i, got.SequenceNumber, want)
				}
			}
			if n := s.resend([]uint16{65534, 1, 3000}); n != 2 {
				t.Fatalf("resent %d packets, want 2 (65534 and 1; 3000 was never sent)", n)
			}
			for _, want := range [][]byte{sent[1], sent[4]} {
				if got := receive(t, recv); !bytes.Equal(got, want) {
					t.Errorf("retransmission differs from the packet sent")
				}
			}
			// A duplicate of a packet already sent is not encrypted again.
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: 65535, Timestamp: 2 * 960}, Payload: []byte{1}}
			if ok, err := s.Write(tr.SendBuffer(), tr, p, 0x85, true, time.Now().UnixNano()); ok || err != nil {
				t.Errorf("duplicate: written %v, err %v; want dropped", ok, err)
			}
		})
	}
}

// TestDirectEgressNeverFallsBack checks that a down-track that has encrypted
// with its own context refuses to write once its route is gone, rather than
// hand its SSRC to pion's context.
func TestDirectEgressNeverFallsBack(t *testing.T) {
	s, tr, recv, _ := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
	w := &countingWriter{}
	s.writer = w
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: 1}, Payload: []byte{1, 2, 3}}
	if ok, err := s.Write(tr.SendBuffer(), tr, p, 0, false, time.Now().UnixNano()); !ok || err != nil {
		t.Fatalf("first packet: %v %v", ok, err)
	}
	receive(t, recv)
	s.peer.egress.Store(nil)
	p.SequenceNumber++
	if ok, err := s.Write(tr.SendBuffer(), tr, p, 0, false, time.Now().UnixNano()); ok || !errors.Is(err, errNoRoute) {
		t.Errorf("without a route: written %v, err %v; want errNoRoute", ok, err)
	}
	if w.n != 0 {
		t.Errorf("pion's writer got %d packets, want 0", w.n)
	}
}

type countingWriter struct{ n int }

func (w *countingWriter) WriteRTP(*rtp.Header, []byte) (int, error) { w.n++; return 0, nil }
func (w *countingWriter) Write(b []byte) (int, error)               { w.n++; return len(b), nil }

// TestNTPTime checks the conversion against RFC 3550's epoch.
func TestNTPTime(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want uint64
	}{
		{time.Unix(0, 0), 2208988800 << 32},
		{time.Unix(1, 500_000_000), (2208988801 << 32) | 1<<31},
	} {
		if got := ntpTime(tc.t); got != tc.want {
			t.Errorf("ntpTime(%v) = %#x, want %#x", tc.t, got, tc.want)
		}
	}
}

// count returns how many sockets are open.
func (s *sockets) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byAddr)
}

// TestSocketsForgetClosed checks that the socket registry finds what ICE
// opened and forgets it on close.
func TestSocketsForgetClosed(t *testing.T) {
	socks, err := newSockets()
	if err != nil {
		t.Fatal(err)
	}
	c, err := socks.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().(*net.UDPAddr).AddrPort()
	if socks.lookup(addr) == nil {
		t.Fatalf("socket %s not found", addr)
	}
	pair := &webrtc.ICECandidatePair{
		Local:  &webrtc.ICECandidate{Protocol: webrtc.ICEProtocolUDP, Typ: webrtc.ICECandidateTypeHost, Address: "127.0.0.1", Port: addr.Port()},
		Remote: &webrtc.ICECandidate{Protocol: webrtc.ICEProtocolUDP, Typ: webrtc.ICECandidateTypeHost, Address: "127.0.0.1", Port: 9},
	}
	conn, to, err := route(pair, socks)
	if err != nil || conn == nil || to != netip.MustParseAddrPort("127.0.0.1:9") {
		t.Fatalf("route: %v %v %v", conn, to, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if socks.lookup(addr) != nil || socks.count() != 0 {
		t.Errorf("closed socket still registered (%d open)", socks.count())
	}
	if _, _, err := route(pair, socks); !errors.Is(err, errNoDirectEgress) {
		t.Errorf("route after close: %v, want errNoDirectEgress", err)
	}
	pair.Local.Typ = webrtc.ICECandidateTypeRelay
	if _, _, err := route(pair, socks); !errors.Is(err, errNoDirectEgress) {
		t.Errorf("route from a relay candidate: %v, want errNoDirectEgress", err)
	}
}

// TestSendBatch checks the UDP_PORT mode: the copies of a packet are queued
// and leave together on Track.Flush, in order; a datagram the kernel
// refuses is counted and does not hold back the others.
func TestSendBatch(t *testing.T) {
	s, tr, recv, e := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
	e.batch = ipv4.NewPacketConn(e.conn)
	e.addr = net.UDPAddrFromAddrPort(e.to)
	for i := 0; i < 3; i++ {
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: uint16(i)}, Payload: []byte{byte(i)}}
		if ok, err := s.Write(tr.SendBuffer(), tr, p, 0, false, time.Now().UnixNano()); !ok || err != nil {
			t.Fatalf("packet %d: %v %v", i, ok, err)
		}
	}
	if len(tr.buf.msgs) != 3 {
		t.Fatalf("%d packets queued, want 3", len(tr.buf.msgs))
	}
	// One datagram the kernel refuses: an IPv6 address on an IPv4 socket.
	buf := tr.buf.buffer(e.batch)
	tr.buf.queue(buf[:20], &net.UDPAddr{IP: net.IPv6loopback, Port: 9})
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: 3}, Payload: []byte{3}}
	if ok, err := s.Write(tr.SendBuffer(), tr, p, 0, false, time.Now().UnixNano()); !ok || err != nil {
		t.Fatalf("packet 3: %v %v", ok, err)
	}
	failed, err := tr.SendBuffer().Flush()
	if failed != 1 || err == nil {
		t.Errorf("Flush: %d failed, err %v; want 1 and an error", failed, err)
	}
	dec, err := srtp.CreateContext(e.key, e.salt, e.profile)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		plain, err := dec.DecryptRTP(nil, receive(t, recv), nil)
		if err != nil {
			t.Fatal(err)
		}
		var got rtp.Packet
		if err := got.Unmarshal(plain); err != nil {
			t.Fatal(err)
		}
		if got.SequenceNumber != uint16(i) || got.Payload[0] != byte(i) {
			t.Errorf("datagram %d: seq %d payload %x", i, got.SequenceNumber, got.Payload)
		}
	}
	if failed, err := tr.SendBuffer().Flush(); failed != 0 || err != nil || len(tr.buf.msgs) != 0 {
		t.Errorf("second Flush: %d %v, %d queued", failed, err, len(tr.buf.msgs))
	}
}

// BenchmarkDirectEgress measures one slot's direct write of a 100-byte
// Opus packet: rewriting, SRTP (AES-128-GCM) and the send to a loopback
// socket, one sendto each or queued and sent 100 at a time with sendmmsg.
// The receiving socket is drained by another goroutine.
func BenchmarkDirectEgress(b *testing.B) {
	for _, batched := range []bool{false, true} {
		name := "sendto"
		if batched {
			name = "sendmmsg100"
		}
		b.Run(name, func(b *testing.B) {
			s, tr, recv, e := directDownTrack(b, srtp.ProtectionProfileAeadAes128Gcm)
			if batched {
				e.batch = ipv4.NewPacketConn(e.conn)
				e.addr = net.UDPAddrFromAddrPort(e.to)
			}
			drain(b, recv)
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1}, Payload: make([]byte, 100)}
			now := time.Now().UnixNano()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.SequenceNumber++
				p.Timestamp += 960
				if _, err := s.Write(tr.SendBuffer(), tr, p, 0x8a, true, now); err != nil {
					b.Fatal(err)
				}
				if !batched || i%100 == 99 {
					if _, err := tr.SendBuffer().Flush(); err != nil {
						b.Fatal(err)
					}
				}
			}
			if _, err := tr.SendBuffer().Flush(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// TestArrival checks which time a track reader gives a packet: the kernel's
// arrival time when its socket noted one, else the time of the read.
func TestArrival(t *testing.T) {
	var tb stamp.Table
	p := &Peer{}
	p.arrivals.Store(&tb)
	pkt := func(seq uint16) []byte {
		b := make([]byte, 12)
		b[0], b[1] = 0x80, 111
		binary.BigEndian.PutUint16(b[2:], seq)
		binary.BigEndian.PutUint32(b[8:], 9)
		return b
	}
	now := time.Now().UnixNano()
	tb.Record(pkt(1), now-int64(3*time.Millisecond))
	tb.Record(pkt(2), now-int64(time.Minute))
	tb.Record(pkt(3), now+int64(time.Hour))
	for _, tc := range []struct {
		name   string
		seq    uint16
		kernel bool
	}{
		{"noted", 1, true},
		{"not noted", 4, false},
		{"too old: another packet's", 2, false},
		{"in the future", 3, false},
	} {
		before := time.Now()
		got := p.arrival(pkt(tc.seq))
		if tc.kernel {
			if got.UnixNano() != now-int64(3*time.Millisecond) {
				t.Errorf("%s: %v, want the kernel time", tc.name, got)
			}
		} else if got.Before(before) || got.After(time.Now()) {
			t.Errorf("%s: %v, want the read time", tc.name, got)
		}
	}
}
