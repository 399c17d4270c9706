package rtc

import (
	"bytes"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/logging"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
)

// seqRange returns the sequence numbers from..to.
func seqRange(from, to uint16) []uint16 {
	var s []uint16
	for q := from; q != to+1; q++ {
		s = append(s, q)
	}
	return s
}

// TestNACKFloodDirect checks the direct path against a receiver that NACKs
// the same 64 packets 100 times: each is resent once per nackWindow, the
// bytes resent stay within the budget the stream's own bytes refill (at
// most 2× them, whatever the NACKs say), what is refused is counted, and a
// first NACK for packets the receiver really missed is still answered,
// with the very bytes sent the first time.
func TestNACKFloodDirect(t *testing.T) {
	s, tr, recv, _ := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
	sent := map[uint16][]byte{}
	sentBytes := 0
	write := func(seq uint16) {
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: bytes.Repeat([]byte{byte(seq)}, 100)}
		raw, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		tr.Cache(raw)
		if ok, err := s.Write(tr.SendBuffer(), tr, p, 0x85, true, time.Now().UnixNano()); !ok || err != nil {
			t.Fatalf("packet %d not written: %v %v", seq, ok, err)
		}
		b := receive(t, recv)
		sent[seq] = b
		sentBytes += len(b)
	}
	// resent reads the retransmissions that reached the receiver and
	// checks that each is a packet sent before, byte for byte.
	resent := func() (n int) {
		t.Helper()
		buf := make([]byte, 1500)
		for {
			if err := recv.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			m, err := recv.Read(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return n
			}
			if err != nil {
				t.Fatal(err)
			}
			seq := uint16(buf[2])<<8 | uint16(buf[3])
			if !bytes.Equal(buf[:m], sent[seq]) {
				t.Errorf("retransmission of %d differs from the packet sent", seq)
			}
			n++
		}
	}
	for seq := uint16(1); seq <= 200; seq++ {
		write(seq)
	}
	wire := len(sent[1]) // every packet is this long
	total := 0           // packets resent

	last := seqRange(137, 200)
	start := time.Now()
	for i := 0; i < 100; i++ {
		total += s.resend(last)
	}
	elapsed := time.Since(start)
	if total*wire > 2*sentBytes {
		t.Fatalf("100 NACKs of the same 64 packets: %d packets (%d bytes) resent for %d bytes sent, %.1f×; want at most 2×",
			total, total*wire, sentBytes, float64(total*wire)/float64(sentBytes))
	}
	if elapsed < nackWindow && total != 64 {
		t.Errorf("100 NACKs of the same 64 packets within %v: %d resent, want each once (64)", elapsed, total)
	}
	if got := resent(); got != total {
		t.Errorf("receiver got %d retransmissions, want %d", got, total)
	}
	if r, refused := s.Retransmissions(); r != uint64(total) || r+refused != 100*64 {
		t.Errorf("Retransmissions: %d resent, %d refused; want %d and %d", r, refused, total, 100*64-total)
	}

	// The receiver misses two of the next packets: its first NACK for them
	// is answered.
	for seq := uint16(201); seq <= 220; seq++ {
		write(seq)
	}
	if n := s.resend([]uint16{205, 210}); n != 2 {
		t.Fatalf("first NACK of 205 and 210: %d resent, want 2", n)
	}
	if got := resent(); got != 2 {
		t.Errorf("receiver got %d retransmissions, want 2", got)
	}
	total += 2

	// The same flood, one NACK every nackWindow: the budget bounds it.
	now := time.Now().UnixNano()
	last = seqRange(157, 220)
	for i := 1; i <= 100; i++ {
		total += s.resendAt(last, now+int64(i)*int64(nackWindow))
	}
	if budget := sentBytes * resendNum / resendDen; total*wire > budget {
		t.Errorf("100 NACKs of 64 packets, one per window: %d bytes resent in all, over the budget of %d (%d bytes sent)", total*wire, budget, sentBytes)
	}
	if r, _ := s.Retransmissions(); r != uint64(total) {
		t.Errorf("Retransmissions: %d resent, want %d", r, total)
	}
	t.Logf("%d bytes sent, %d resent (%.2f×)", sentBytes, total*wire, float64(total*wire)/float64(sentBytes))
}

func (v nackVerdict) String() string {
	return [...]string{"resend", "unknown", "duplicate", "over budget"}[v]
}

// TestNACKLimiter checks the limiter's burst, its refill by the stream's
// own bytes, and its window against duplicates.
func TestNACKLimiter(t *testing.T) {
	const ms = int64(time.Millisecond)
	type step struct {
		sent bool   // a packet of size goes out under seq; else seq is NACKed at at
		seq  uint16 //
		size int
		at   int64
		want nackVerdict
	}
	// sends returns steps sending n packets of size from seq on.
	sends := func(seq uint16, n, size int) []step {
		var s []step
		for i := 0; i < n; i++ {
			s = append(s, step{sent: true, seq: seq + uint16(i), size: size})
		}
		return s
	}
	nack := func(seq uint16, at int64, want nackVerdict) step { return step{seq: seq, at: at, want: want} }
	for _, tc := range []struct {
		name  string
		n     int // marks
		burst int // bytes
		steps []step
	}{
		{"unknown", 8, 1000, append(sends(10, 2, 100),
			nack(9, 0, nackUnknown), nack(12, 0, nackUnknown),
		)},
		{"starts empty: half of what was sent", 8, 1000, append(sends(1, 1, 100),
			nack(1, 0, nackOverBudget), // 100 bytes sent: 50 to resend
			step{sent: true, seq: 2, size: 100},
			nack(1, 0, nackResend), // 200 sent: 100
			nack(2, 0, nackOverBudget),
		)},
		{"burst caps the budget", 64, 1000, append(sends(1, 60, 100), // 6000 sent: 3000, capped at 1000
			nack(1, 0, nackResend), nack(2, 0, nackResend), nack(3, 0, nackResend), nack(4, 0, nackResend), nack(5, 0, nackResend),
			nack(6, 0, nackResend), nack(7, 0, nackResend), nack(8, 0, nackResend), nack(9, 0, nackResend), nack(10, 0, nackResend),
			nack(11, 0, nackOverBudget),
		)},
		{"refills at half the stream's bytes", 64, 1000, append(append(sends(1, 20, 100),
			nack(1, 0, nackResend), nack(2, 0, nackResend), nack(3, 0, nackResend), nack(4, 0, nackResend), nack(5, 0, nackResend),
			nack(6, 0, nackResend), nack(7, 0, nackResend), nack(8, 0, nackResend), nack(9, 0, nackResend), nack(10, 0, nackResend),
			nack(11, 0, nackOverBudget)),
			append(sends(21, 3, 100), // 300 more: 150
				nack(11, 0, nackResend), // refused over budget before, resent now
				nack(12, 0, nackOverBudget),
			)...,
		)},
		{"size counts", 8, 1000, append(sends(1, 4, 100), // 400: 200
			step{sent: true, seq: 5, size: 300}, // 700: 350
			nack(5, 0, nackResend),              // 300 of 350
			nack(4, 0, nackOverBudget),          // 100 > 50
		)},
		{"window", 8, 1000, append(sends(1, 8, 100),
			nack(3, 1000*ms, nackResend),
			nack(3, 1000*ms, nackDuplicate),
			nack(3, 1099*ms, nackDuplicate),
			nack(4, 1099*ms, nackResend), // others are not held back
			nack(3, 1100*ms, nackResend), // a retransmission may be lost too
			nack(3, 1150*ms, nackDuplicate),
			nack(3, 1200*ms, nackResend),     // 400 bytes of 400 spent
			nack(3, 1300*ms, nackOverBudget), // not a duplicate: over budget
		)},
		{"a duplicate spends nothing", 8, 1000, append(sends(1, 4, 100), // 200
			nack(1, 0, nackResend), nack(1, 10*ms, nackDuplicate), nack(1, 20*ms, nackDuplicate),
			nack(2, 30*ms, nackResend),
		)},
		{"a new packet under a mark", 4, 1000, append(append(sends(1, 8, 100),
			nack(1, 0, nackUnknown), nack(5, 0, nackResend)),
			append(sends(9, 1, 100), nack(5, 0, nackUnknown), nack(9, 0, nackResend))...,
		)},
		{"wrap", 8, 1000, append(sends(65533, 6, 100),
			nack(65535, 0, nackResend), nack(0, 0, nackResend), nack(2, 0, nackResend),
		)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newNackLimiter(tc.n, tc.burst)
			for i, st := range tc.steps {
				if st.sent {
					l.sent(st.seq, st.size)
					continue
				}
				if got := l.allow(st.seq, st.at); got != st.want {
					t.Errorf("step %d: NACK of %d at %d ms: %v, want %v", i, st.seq, st.at/ms, got, st.want)
				}
			}
		})
	}
}

// TestNACKLimiterFilter checks that NACK pairs are filtered in place into
// pairs that name exactly what is allowed.
func TestNACKLimiterFilter(t *testing.T) {
	l := newNackLimiter(64, 1<<20)
	for _, seq := range seqRange(65500, 30) {
		l.sent(seq, 100)
	}
	if v := l.allow(65520, 0); v != nackResend {
		t.Fatal(v)
	}
	asked := []uint16{65490, 65510, 65512, 65520, 65522, 65526, 65535, 0, 1, 17, 40}
	pairs := rtcp.NackPairsFromSequenceNumbers(asked)
	out, refused := l.filter(pairs, 50*int64(time.Millisecond))
	var got []uint16
	for _, p := range out {
		got = append(got, p.PacketList()...)
	}
	// 65490 and 40 are unknown; 65520 is a duplicate.
	if want := []uint16{65510, 65512, 65522, 65526, 65535, 0, 1, 17}; !slices.Equal(got, want) || refused != 1 {
		t.Errorf("filtered: %v, %d refused; want %v, 1", got, refused, want)
	}
	if len(out) > 0 && &out[0] != &pairs[0] {
		t.Error("pairs not filtered in place")
	}
	if allocs := testing.AllocsPerRun(100, func() { l.filter(pairs, 0) }); allocs != 0 {
		t.Errorf("filter: %v allocations", allocs)
	}
}

// TestNACKFloodPion checks the pion egress path as newMedia builds it: pion's
// NACK responder, asked 100 times for the same 64 packets, resends each
// once, within the budget, and still answers a first NACK for packets
// missed.
func TestNACKFloodPion(t *testing.T) {
	_, reg, err := newMedia(&counters{}, false, logging.NewDefaultLoggerFactory())
	if err != nil {
		t.Fatal(err)
	}
	chain, err := reg.Build("pc")
	if err != nil {
		t.Fatal(err)
	}
	defer chain.Close()
	var mu sync.Mutex
	var writes, bytesOut int
	const ssrc = 4242
	w := chain.BindLocalStream(&interceptor.StreamInfo{
		SSRC: ssrc, MimeType: "audio/opus", ClockRate: 48000, Channels: 2, PayloadType: 111,
		RTCPFeedback: []interceptor.RTCPFeedback{{Type: "nack"}},
	}, interceptor.RTPWriterFunc(func(h *rtp.Header, payload []byte, _ interceptor.Attributes) (int, error) {
		mu.Lock()
		writes++
		bytesOut += h.MarshalSize() + len(payload)
		mu.Unlock()
		return h.MarshalSize() + len(payload), nil
	}))
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return writes, bytesOut
	}
	// settled waits until the responder's goroutines have written, and
	// returns the packets and bytes written since n, b.
	settled := func(n, b int) (int, int) {
		last, deadline := -1, time.Now().Add(5*time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			c, cb := counts()
			if c == last {
				return c - n, cb - b
			}
			last = c
		}
		t.Fatal("the responder does not settle")
		return 0, 0
	}
	send := func(from, to uint16) {
		for _, seq := range seqRange(from, to) {
			h := &rtp.Header{Version: 2, PayloadType: 111, SSRC: ssrc, SequenceNumber: seq, Timestamp: uint32(seq) * 960}
			if _, err := w.Write(h, make([]byte, 100), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	var nackRaw []byte
	r := chain.BindRTCPReader(interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		return copy(b, nackRaw), a, nil
	}))
	nack := func(seqs []uint16) {
		raw, err := (&rtcp.TransportLayerNack{SenderSSRC: 1, MediaSSRC: ssrc, Nacks: rtcp.NackPairsFromSequenceNumbers(seqs)}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		nackRaw = raw
		buf := make([]byte, 1500)
		n, _, err := r.Read(buf, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:n], raw) {
			t.Fatal("the NACK's bytes were changed for the readers after the responder")
		}
	}

	send(1, 200)
	sentN, sentBytes := counts()
	start := time.Now()
	for i := 0; i < 100; i++ {
		nack(seqRange(137, 200))
	}
	elapsed := time.Since(start)
	n, b := settled(sentN, sentBytes)
	if b > 2*sentBytes {
		t.Fatalf("100 NACKs of the same 64 packets: %d packets (%d bytes) resent for %d bytes sent, %.1f×; want at most 2×",
			n, b, sentBytes, float64(b)/float64(sentBytes))
	}
	if elapsed < nackWindow && n != 64 {
		t.Errorf("100 NACKs of the same 64 packets within %v: %d resent, want each once (64)", elapsed, n)
	}

	send(201, 220)
	sentN, sentBytes = counts()
	nack([]uint16{205, 210})
	if n, _ := settled(sentN, sentBytes); n != 2 {
		t.Errorf("first NACK of 205 and 210: %d resent, want 2", n)
	}
}

// TestNACKAnswerAllocs checks that answering a NACK on the direct path
// allocates nothing in the steady state, whether it resends or refuses.
func TestNACKAnswerAllocs(t *testing.T) {
	s, tr, recv, _ := directDownTrack(t, srtp.ProtectionProfileAeadAes128Gcm)
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, err := recv.Read(buf); err != nil {
				return
			}
		}
	}()
	for seq := uint16(1); seq <= 64; seq++ {
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: make([]byte, 100)}
		raw, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		tr.Cache(raw)
		if ok, err := s.Write(tr.SendBuffer(), tr, p, 0x85, true, time.Now().UnixNano()); !ok || err != nil {
			t.Fatalf("packet %d not written: %v %v", seq, ok, err)
		}
	}
	seqs := seqRange(1, 64)
	now := time.Now().UnixNano()
	s.resendAt(seqs, now) // the buffers grow once
	if a := testing.AllocsPerRun(100, func() { s.resendAt(seqs, now) }); a != 0 {
		t.Errorf("refusing a NACK of 64 duplicates: %v allocations", a)
	}
	s.limit.tokens, s.limit.max = 1<<50, 1<<50
	i := int64(0)
	if a := testing.AllocsPerRun(100, func() {
		i++
		if n := s.resendAt(seqs[:8], now+i*int64(nackWindow)); n != 8 {
			t.Fatalf("%d resent, want 8", n)
		}
	}); a != 0 {
		t.Errorf("resending 8 packets: %v allocations", a)
	}
}

// BenchmarkNACKFlood measures answering a NACK of the same 64 audio
// packets, over and over: after the first, all are refused as duplicates
// (before the limiter, each NACK resent all 64).
func BenchmarkNACKFlood(b *testing.B) {
	s, tr, recv, _ := directDownTrack(b, srtp.ProtectionProfileAeadAes128Gcm)
	drain(b, recv)
	for seq := uint16(1); seq <= 64; seq++ {
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: make([]byte, 100)}
		raw, err := p.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		tr.Cache(raw)
		if _, err := s.Write(tr.SendBuffer(), tr, p, 0x85, true, time.Now().UnixNano()); err != nil {
			b.Fatal(err)
		}
	}
	seqs := seqRange(1, 64)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.resend(seqs)
	}
}
