package rtc

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"

	"github.com/beepvoice/router/rtc/codec"
)

// Bounded NACK answers.
//
// A NACK costs its sender a few bytes and can name 17 packets per 4 bytes;
// answered blindly, a receiver that names the same packets over and over
// makes the router send many times the stream (measured: 177-252×, a full
// core). Each receiving stream therefore answers through a nackLimiter:
//
//   - A packet resent to the receiver is not resent again within
//     nackWindow: about a round trip, the time before a receiver may
//     rightly ask again for a retransmission that was lost too (libwebrtc
//     waits one RTT, 100 ms until it has measured one).
//   - Retransmissions spend a budget that only the stream's own packets
//     refill: each packet sent adds resendNum/resendDen of its bytes, each
//     packet resent costs its bytes. The budget starts empty and holds at
//     most a burst. So, whatever the NACKs say, the bytes resent stay
//     under half the bytes sent plus one burst: the stream costs at most
//     1.5× its own bytes. Half is more than NACK can help with: beyond
//     some 30% loss, receivers ask for keyframes instead.
//
// What is refused (a duplicate, or over the budget) is counted; a NACK for
// a packet that is no longer held is not answered and not counted.
const (
	nackWindow           = 100 * time.Millisecond
	resendNum, resendDen = 1, 2
	// Bursts: more than the whole audio history (64 packets) of Opus at
	// up to 250 bytes; about 100 full video packets, half a second of
	// 2 Mbit/s.
	audioResendBurst = 16 << 10
	videoResendBurst = 128 << 10
)

// pionNACKHistory is how many packets pion's NACK responder keeps per
// stream (on the pion egress path), and so its limiter too.
const pionNACKHistory = 64

// nackVerdict is what a nackLimiter says of one NACKed sequence number.
type nackVerdict uint8

const (
	nackResend     nackVerdict = iota // send it again
	nackUnknown                       // no such packet sent lately
	nackDuplicate                     // resent less than nackWindow ago
	nackOverBudget                    // the stream's retransmission budget is spent
)

// resendMark is what a nackLimiter knows of one sequence number.
type resendMark struct {
	at     int64 // unix ns of the last retransmission, if resent
	seq    uint16
	size   uint16 // bytes of the packet
	ok     bool   // a packet went out under seq
	resent bool
}

// nackLimiter decides which NACKed packets of one stream to send again: it
// is told of each packet the stream sends (sent) and asked of each
// sequence number a NACK names (allow). It does not lock and allocates
// only in newNackLimiter.
type nackLimiter struct {
	marks  []resendMark // by sequence number modulo its length
	tokens int64        // budget, in bytes × resendDen
	max    int64
}

// newNackLimiter returns a limiter that answers for the last n packets
// sent, with a burst of burst bytes.
func newNackLimiter(n, burst int) nackLimiter {
	return nackLimiter{marks: make([]resendMark, n), max: int64(burst) * resendDen}
}

// sent records that a packet of size bytes went out under seq, and refills
// the budget with its share of size.
func (l *nackLimiter) sent(seq uint16, size int) {
	l.marks[int(seq)%len(l.marks)] = resendMark{seq: seq, size: uint16(min(size, 0xffff)), ok: true}
	l.tokens = min(l.tokens+int64(size)*resendNum, l.max)
}

// allow says whether the packet sent under seq may go out again at now
// (unix ns); if so, it spends the budget and marks the packet resent.
func (l *nackLimiter) allow(seq uint16, now int64) nackVerdict {
	m := &l.marks[int(seq)%len(l.marks)]
	if !m.ok || m.seq != seq {
		return nackUnknown
	}
	if m.resent && now-m.at < int64(nackWindow) {
		return nackDuplicate
	}
	cost := int64(m.size) * resendDen
	if cost > l.tokens {
		return nackOverBudget
	}
	l.tokens -= cost
	m.at, m.resent = now, true
	return nackResend
}

// filter keeps, in place, only the sequence numbers of pairs that allow
// lets go out at now, and returns the pairs left and how many numbers it
// refused. Each pair stays at most one pair: what is left of it lies
// within 16 of its first number left.
func (l *nackLimiter) filter(pairs []rtcp.NackPair, now int64) ([]rtcp.NackPair, uint64) {
	out := pairs[:0]
	var refused uint64
	for _, p := range pairs {
		var q rtcp.NackPair
		have := false
		for i := -1; i < 16; i++ {
			seq := p.PacketID
			if i >= 0 {
				if p.LostPackets&(1<<i) == 0 {
					continue
				}
				seq += uint16(i + 1)
			}
			switch l.allow(seq, now) {
			case nackResend:
				if !have {
					q, have = rtcp.NackPair{PacketID: seq}, true
				} else {
					q.LostPackets |= 1 << (seq - q.PacketID - 1)
				}
			case nackDuplicate, nackOverBudget:
				refused++
			}
		}
		if have {
			out = append(out, q)
		}
	}
	return out, refused
}

// nackGuard wraps the factory of pion's NACK responder (the pion egress
// path) so that the NACKs it sees have gone through a nackLimiter per
// stream, as the direct path's do (DownTrack.resend). pion's responder has
// no bound of its own: it answers every sequence number of every NACK, each
// NACK in a goroutine of its own.
//
// The guard is the responder's own place in the chain. Its BindRTCPReader
// hands the responder a reader that filters what the readers before it
// return: pion's chain binds each interceptor's reader over the previous
// one's, so on every read the responder parses only after the filter has
// run. The filter edits the NACKs in the parsed packets that the read's
// attributes cache (interceptor.Attributes.GetRTCPPackets), which the
// responder takes from there; the bytes are left alone, so that what reads
// on (the router's readFeedback) still sees and counts every NACK. Its
// BindLocalStream counts the stream's packets on their way to the
// responder's writer: retransmissions, which the responder writes past
// itself, are not counted.
type nackGuard struct {
	interceptor.Factory
	// refused, if not nil, counts the NACKed packets refused.
	refused *atomic.Uint64
}

// NewInterceptor implements interceptor.Factory.
func (f nackGuard) NewInterceptor(id string) (interceptor.Interceptor, error) {
	i, err := f.Factory.NewInterceptor(id)
	if err != nil {
		return nil, err
	}
	return &guardedResponder{Interceptor: i, refused: f.refused, streams: map[uint32]*guardedStream{}}, nil
}

type guardedResponder struct {
	interceptor.Interceptor
	refused *atomic.Uint64

	mu      sync.Mutex
	streams map[uint32]*guardedStream // by SSRC
}

type guardedStream struct {
	mu    sync.Mutex
	limit nackLimiter
}

// BindLocalStream binds the responder to the stream and, if the stream
// negotiated NACK, counts what it sends.
func (g *guardedResponder) BindLocalStream(info *interceptor.StreamInfo, w interceptor.RTPWriter) interceptor.RTPWriter {
	inner := g.Interceptor.BindLocalStream(info, w)
	if !nackNegotiated(info) {
		return inner
	}
	burst := audioResendBurst
	if codec.IsVideo(info.MimeType) {
		burst = videoResendBurst
	}
	st := &guardedStream{limit: newNackLimiter(pionNACKHistory, burst)}
	g.mu.Lock()
	g.streams[info.SSRC] = st
	g.mu.Unlock()
	return interceptor.RTPWriterFunc(func(h *rtp.Header, payload []byte, a interceptor.Attributes) (int, error) {
		st.mu.Lock()
		st.limit.sent(h.SequenceNumber, h.MarshalSize()+len(payload))
		st.mu.Unlock()
		return inner.Write(h, payload, a)
	})
}

// UnbindLocalStream forgets the stream.
func (g *guardedResponder) UnbindLocalStream(info *interceptor.StreamInfo) {
	g.mu.Lock()
	delete(g.streams, info.SSRC)
	g.mu.Unlock()
	g.Interceptor.UnbindLocalStream(info)
}

// BindRTCPReader puts the filter between r and the responder.
func (g *guardedResponder) BindRTCPReader(r interceptor.RTCPReader) interceptor.RTCPReader {
	return g.Interceptor.BindRTCPReader(interceptor.RTCPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
		n, a, err := r.Read(b, a)
		if err != nil {
			return n, a, err
		}
		if a == nil {
			a = make(interceptor.Attributes)
		}
		pkts, err := a.GetRTCPPackets(b[:n])
		if err != nil {
			return n, a, nil // the responder finds the same error
		}
		now := time.Now().UnixNano()
		for _, p := range pkts {
			if nack, ok := p.(*rtcp.TransportLayerNack); ok {
				g.filter(nack, now)
			}
		}
		return n, a, nil
	}))
}

// filter drops from nack the sequence numbers its stream's limiter
// refuses or does not know.
func (g *guardedResponder) filter(nack *rtcp.TransportLayerNack, now int64) {
	g.mu.Lock()
	st := g.streams[nack.MediaSSRC]
	g.mu.Unlock()
	if st == nil {
		return // not a stream the responder answers for
	}
	st.mu.Lock()
	var refused uint64
	nack.Nacks, refused = st.limit.filter(nack.Nacks, now)
	st.mu.Unlock()
	if refused > 0 && g.refused != nil {
		g.refused.Add(refused)
	}
}

// nackNegotiated reports whether the stream negotiated generic NACK, as
// pion's responder decides whether to answer for it.
func nackNegotiated(info *interceptor.StreamInfo) bool {
	for _, fb := range info.RTCPFeedback {
		if fb.Type == "nack" && fb.Parameter == "" {
			return true
		}
	}
	return false
}
