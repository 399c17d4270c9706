package rtc

import (
	"bytes"
	"context"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/transport/v2/packetio"
)

// TestDirectIngress: a pion client publishes; with the direct ingress
// path, the router takes its packets at the socket, on the shared socket
// and on one of the peer's own, with each SRTP profile the path opens, and
// they reach the track in order, intact. With PionIngress none takes it.
func TestDirectIngress(t *testing.T) {
	for _, tc := range []struct {
		name    string
		shared  bool
		profile dtls.SRTPProtectionProfile
		pion    bool
	}{
		{"AEAD_AES_256_GCM, shared socket", true, dtls.SRTP_AEAD_AES_256_GCM, false},
		{"AES_CM_128_HMAC_SHA1_80, shared socket", true, dtls.SRTP_AES128_CM_HMAC_SHA1_80, false},
		{"AEAD_AES_128_GCM, the peer's own socket", false, dtls.SRTP_AEAD_AES_128_GCM, false},
		{"PionIngress", true, dtls.SRTP_AEAD_AES_256_GCM, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := NewEngine(Config{ICEIPs: loopback4, SharedSocket: tc.shared, PionIngress: tc.pion})
			if err != nil {
				t.Fatal(err)
			}
			defer closeEngine(t, e)
			h := recordHandler{sink: recordSink{pkts: make(chan *rtp.Packet, 512)}, ups: make(chan *UpTrack, 1)}
			tr, peer := opusPublisher(t, e, h, tc.profile)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			send := func(seq uint16) {
				t.Helper()
				payload := []byte{0xf8, byte(seq >> 8), byte(seq), 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17}
				pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: payload}
				if err := tr.WriteRTP(pkt); err != nil {
					t.Fatal(err)
				}
			}
			seq := uint16(65000) // the stream wraps on the direct path
			untilTrack(ctx, t, h, func() { send(seq) })
			select {
			case p := <-h.sink.pkts:
				if p.SequenceNumber != seq {
					t.Fatalf("first packet: sequence number %d, want %d", p.SequenceNumber, seq)
				}
			case <-ctx.Done():
				t.Fatal("the first packet did not reach the track")
			}
			before := e.Stats()
			const n = 1000
			next := seq + 1 // the next sequence number the track should get
			for i := range n {
				send(seq + 1 + uint16(i))
				if i%50 != 49 {
					continue
				}
				// Paced, so that no buffer overflows on a busy host.
				for range 50 {
					select {
					case p := <-h.sink.pkts:
						if p.SequenceNumber != next {
							t.Fatalf("got sequence number %d, want %d", p.SequenceNumber, next)
						}
						if p.Payload[1] != byte(next>>8) || p.Payload[2] != byte(next) || p.Payload[19] != 17 {
							t.Fatalf("packet %d: payload %x", next, p.Payload)
						}
						next++
					case <-ctx.Done():
						t.Fatalf("packet %d did not reach the track", next)
					}
				}
			}
			st := e.Stats()
			direct := st.IngressDirect - before.IngressDirect
			t.Logf("%d of %d packets on the direct path; %d left to pion, %d replays", direct, n, st.IngressFallback, st.IngressReplays)
			if tc.pion {
				if st.IngressDirect != 0 {
					t.Errorf("PionIngress: %d packets on the direct path", st.IngressDirect)
				}
				return
			}
			if direct != n {
				t.Errorf("%d of %d packets on the direct path", direct, n)
			}
			if st.IngressFallback != 0 || st.IngressReplays != 0 || st.Overload != 0 {
				t.Errorf("left to pion %d, replays %d, dropped %d: want none", st.IngressFallback, st.IngressReplays, st.Overload)
			}
			// A closed peer leaves no route on any socket.
			if n := e.socks.routed(); n != 1 {
				t.Fatalf("%d routes while the peer is connected, want 1", n)
			}
			peer.Close()
			<-peer.Done()
			if n := e.socks.routed(); n != 0 {
				t.Errorf("%d routes left after the peer closed", n)
			}
		})
	}
}

// testIngress returns an ingress that opens what keys seal, with the
// read stream of ssrc registered, and the buffer behind it.
func testIngress(t testing.TB, keys srtpKeys, ssrc uint32) (*ingress, *inStream, *packetio.Buffer) {
	t.Helper()
	in := &ingress{count: &counters{}, log: slog.New(slog.DiscardHandler)}
	o := newOpener(keys)
	if o == nil {
		t.Fatalf("no opener for %s", keys.profile)
	}
	in.open.Store(o)
	buf := packetio.NewBuffer()
	buf.SetLimitSize(1 << 20)
	return in, in.newStream(ssrc, buf), buf
}

// ingressKeys are test keys of each profile the direct path opens.
func ingressKeys() []srtpKeys {
	return []srtpKeys{
		gcmTestKeys(srtp.ProtectionProfileAeadAes128Gcm),
		gcmTestKeys(srtp.ProtectionProfileAeadAes256Gcm),
		{key: bytes.Repeat([]byte{7}, cmKeyLen), salt: bytes.Repeat([]byte{9}, cmSaltLen), profile: srtp.ProtectionProfileAes128CmHmacSha1_80},
	}
}

// TestIngressOpensWhatPionSeals: packets pion's SRTP encrypts, with CSRCs
// and header extensions, across a rollover, come out of the direct path
// as they went in; a tampered one is left to pion intact, a replayed one
// taken and dropped; and a stream whose packets keep failing is left to
// pion altogether.
func TestIngressOpensWhatPionSeals(t *testing.T) {
	for _, keys := range ingressKeys() {
		t.Run(keys.profile.String(), func(t *testing.T) {
			const ssrc = 0x11223344
			in, _, buf := testIngress(t, keys, ssrc)
			enc, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
			if err != nil {
				t.Fatal(err)
			}
			read := make([]byte, 1500)
			var sealed [][]byte
			for i := range 40 {
				seq := uint16(65520 + i) // wraps after 16
				h := rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: uint32(i) * 960, SSRC: ssrc}
				if i%3 == 1 {
					h.CSRC = []uint32{1, 2}
				}
				if i%4 == 2 {
					if err := h.SetExtension(1, []byte{byte(i)}); err != nil {
						t.Fatal(err)
					}
				}
				plain, err := (&rtp.Packet{Header: h, Payload: bytes.Repeat([]byte{byte(i)}, 10+i)}).Marshal()
				if err != nil {
					t.Fatal(err)
				}
				pkt, err := enc.EncryptRTP(nil, plain, nil)
				if err != nil {
					t.Fatal(err)
				}
				sealed = append(sealed, bytes.Clone(pkt))
				if !in.receive(pkt) {
					t.Fatalf("packet %d (seq %d) not taken", i, seq)
				}
				n, err := buf.Read(read)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(read[:n], plain) {
					t.Fatalf("packet %d: got %x, want %x", i, read[:n], plain)
				}
			}
			// Tampered: left to pion, as it came.
			bad := bytes.Clone(sealed[39])
			bad[len(bad)-1] ^= 1
			bad[2], bad[3] = 0, 200 // a fresh sequence number
			kept := bytes.Clone(bad)
			if in.receive(bad) {
				t.Fatal("a tampered packet was taken")
			}
			if !bytes.Equal(bad, kept) {
				t.Error("the direct path changed a packet it left to pion")
			}
			// Replayed: taken, not delivered.
			for _, i := range []int{39, 30, 0} {
				if !in.receive(bytes.Clone(sealed[i])) {
					t.Errorf("replay of packet %d not taken", i)
				}
			}
			if got := in.count.ingressReplays.Load(); got != 3 {
				t.Errorf("%d replays counted, want 3", got)
			}
			if got := in.count.ingressDirect.Load(); got != 40 {
				t.Errorf("%d packets counted taken, want 40", got)
			}
			if err := buf.SetReadDeadline(time.Now()); err != nil {
				t.Fatal(err)
			}
			if n, err := buf.Read(read); err == nil {
				t.Errorf("a replay or forgery was delivered: %x", read[:n])
			}
			// Failing again and again: the stream is left to pion.
			for range 2 * maxAuthFailures {
				in.receive(bytes.Clone(bad))
			}
			if got := in.count.ingressFallback.Load(); got != maxAuthFailures {
				t.Errorf("%d failures counted, want %d (then the stream is pion's)", got, maxAuthFailures)
			}
		})
	}
}

// TestInStreamIndex: the rollover guess and the replay window, through
// pion's path (Write) and on their own.
func TestInStreamIndex(t *testing.T) {
	type step struct {
		seq   uint16
		index uint64
		fresh bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"in order across a wrap", []step{{65534, 65534, true}, {65535, 65535, true}, {0, 65536, true}, {1, 65537, true}}},
		{"late across a wrap", []step{{65535, 65535, true}, {2, 65538, true}, {65534, 65534, true}, {0, 65536, true}, {65535, 65535, false}}},
		{"a jump of under half the space", []step{{10, 10, true}, {30000, 30000, true}, {60000, 60000, true}, {5, 65541, true}}},
		{"too old", []step{{100, 100, true}, {200, 200, true}, {136, 136, false}, {137, 137, true}, {137, 137, false}}},
		{"before the first wrap", []step{{5, 5, true}, {65000, 0, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &inStream{in: &ingress{count: &counters{}}, inner: nullBuffer{}}
			for i, st := range tc.steps {
				index, ok := s.guess(st.seq)
				if !ok {
					if st.fresh {
						t.Fatalf("step %d: seq %d has no index", i, st.seq)
					}
					continue
				}
				if index != st.index {
					t.Fatalf("step %d: seq %d guessed index %d, want %d", i, st.seq, index, st.index)
				}
				pkt := []byte{0x80, 111, byte(st.seq >> 8), byte(st.seq), 0, 0, 0, 0, 0, 0, 0, 1}
				before := s.in.count.ingressReplays.Load()
				if _, err := s.Write(pkt); err != nil {
					t.Fatal(err)
				}
				if dropped := s.in.count.ingressReplays.Load() > before; dropped == st.fresh {
					t.Fatalf("step %d: seq %d (index %d) fresh %v, want %v", i, st.seq, index, !dropped, st.fresh)
				}
			}
		})
	}
}

// TestICETimeouts: zeros become pion's defaults, not "never"; with the
// direct ingress path the keepalive interval is at most a third of the
// disconnected timeout.
func TestICETimeouts(t *testing.T) {
	for _, tc := range []struct {
		cfg     Config
		d, f, k time.Duration
	}{
		{Config{}, 5 * time.Second, 25 * time.Second, 5 * time.Second / 3},
		{Config{PionIngress: true}, 5 * time.Second, 25 * time.Second, 2 * time.Second},
		{Config{DisconnectedTimeout: 2 * time.Second, KeepaliveInterval: 500 * time.Millisecond}, 2 * time.Second, 25 * time.Second, 500 * time.Millisecond},
		{Config{DisconnectedTimeout: 900 * time.Millisecond, FailedTimeout: time.Second}, 900 * time.Millisecond, time.Second, 300 * time.Millisecond},
	} {
		d, f, k := iceTimeouts(&tc.cfg)
		if d != tc.d || f != tc.f || k != tc.k {
			t.Errorf("%+v: got %v, %v, %v; want %v, %v, %v", tc.cfg, d, f, k, tc.d, tc.f, tc.k)
		}
	}
}

// FuzzIngress: whatever a datagram holds, the direct path neither panics
// nor delivers what it did not authenticate.
func FuzzIngress(f *testing.F) {
	keys := ingressKeys()[2]
	enc, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
	if err != nil {
		f.Fatal(err)
	}
	h := rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: 7, SSRC: 5}
	if err := h.SetExtension(1, []byte{3}); err != nil {
		f.Fatal(err)
	}
	plain, _ := (&rtp.Packet{Header: h, Payload: []byte{1, 2, 3}}).Marshal()
	pkt, _ := enc.EncryptRTP(nil, plain, nil)
	f.Add(pkt)
	f.Add([]byte{0x9f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0xff, 0xff})
	f.Add([]byte{0x90, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0xbe, 0xde, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		in, _, buf := testIngress(t, keys, 5)
		in.receive(b)
		if in.count.ingressDirect.Load() == 0 {
			if err := buf.SetReadDeadline(time.Now()); err != nil {
				t.Fatal(err)
			}
			if n, err := buf.Read(make([]byte, 1500)); err == nil {
				t.Fatalf("delivered %d bytes it did not take", n)
			}
		}
	})
}

// ingressBench returns an ingress with the stream of ssrc 5 registered
// over a buffer that keeps nothing, and n packets of that stream sealed
// with keys, in order.
func ingressBench(tb testing.TB, keys srtpKeys, n int) (*ingress, *inStream, [][]byte) {
	tb.Helper()
	in := &ingress{count: &counters{}, log: slog.New(slog.DiscardHandler)}
	in.open.Store(newOpener(keys))
	s := in.newStream(5, nullBuffer{})
	enc, err := srtp.CreateContext(keys.key, keys.salt, keys.profile)
	if err != nil {
		tb.Fatal(err)
	}
	pkts := make([][]byte, n)
	for i := range pkts {
		h := rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: uint32(i) * 960, SSRC: 5}
		if err := h.SetExtension(1, []byte{0x30}); err != nil {
			tb.Fatal(err)
		}
		plain, err := (&rtp.Packet{Header: h, Payload: bytes.Repeat([]byte{0xf8}, 100)}).Marshal()
		if err != nil {
			tb.Fatal(err)
		}
		if pkts[i], err = enc.EncryptRTP(nil, plain, nil); err != nil {
			tb.Fatal(err)
		}
	}
	return in, s, pkts
}

// rewind makes s take its packets from the start again.
func (s *inStream) rewind() {
	s.mu.Lock()
	s.started, s.top, s.window = false, 0, 0
	s.mu.Unlock()
}

// TestIngressAllocatesNothing: the direct path takes a packet without
// allocating, with each profile. AllocsPerRun counts the whole process's
// allocations, and an earlier test's goroutines may still be ending: the
// best of a few measurements counts, as a path that allocates does so in
// every one.
func TestIngressAllocatesNothing(t *testing.T) {
	for _, keys := range ingressKeys() {
		in, _, pkts := ingressBench(t, keys, 1000)
		buf := make([]byte, 1500)
		in.receive(append(buf[:0], pkts[0]...)) // the stream's scratch and state
		i := 1
		best := math.Inf(1)
		for range 5 {
			best = min(best, testing.AllocsPerRun(100, func() {
				if !in.receive(append(buf[:0], pkts[i]...)) {
					t.Fatalf("%s: packet %d not taken", keys.profile, i)
				}
				i++
			}))
		}
		if best != 0 {
			t.Errorf("%s: %.2f allocations per packet, want 0", keys.profile, best)
		}
	}
}

// BenchmarkIngress: the direct path's cost per received packet (a 100-byte
// Opus payload with the audio level extension): authenticate, decrypt,
// the rollover and replay state, the write into a buffer.
func BenchmarkIngress(b *testing.B) {
	for _, keys := range ingressKeys() {
		b.Run(keys.profile.String(), func(b *testing.B) {
			in, s, pkts := ingressBench(b, keys, 4096)
			buf := make([]byte, 1500)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%len(pkts) == 0 {
					s.rewind()
				}
				if !in.receive(append(buf[:0], pkts[i%len(pkts)]...)) {
					b.Fatal("not taken")
				}
			}
		})
		// What pion's SRTP session does for the same packet, for
		// comparison: its context's decryption alone.
		b.Run(keys.profile.String()+"/pion", func(b *testing.B) {
			_, _, pkts := ingressBench(b, keys, 4096)
			var dec *srtp.Context
			out := make([]byte, 1500)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if i%len(pkts) == 0 {
					b.StopTimer()
					var err error
					if dec, err = srtp.CreateContext(keys.key, keys.salt, keys.profile); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				if _, err := dec.DecryptRTP(out, pkts[i%len(pkts)], nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// routed counts the direct ingress routes of every open socket.
func (s *sockets) routed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.byAddr {
		n += int(c.routes.n.Load())
	}
	return n
}
