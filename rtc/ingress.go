package rtc

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/beepvoice/router/internal/stamp"
)

// The direct ingress path.
//
// pion hands every received SRTP packet on four times before a track's
// reader has it: the socket's reader (the UDP mux's, or a candidate's)
// writes it to a buffer of the ICE candidate's connection, the candidate's
// receive loop to the agent's, the DTLS/SRTP mux's read loop to the SRTP
// session's endpoint, and the session's read loop decrypts it into the
// buffer of the SSRC's read stream, which the track's reader (through the
// interceptors) reads. Each hand-off is a goroutine woken, and under load
// each waits behind whatever else is runnable: at 10 publishers × 100
// subscribers on one core that was most of the router-added latency's tail.
//
// The direct path takes the packets of a connected peer's streams at the
// socket's reader and writes them, authenticated and decrypted with the
// peer's remote keys (a gcmSealer or cmSealer, as on the way out), straight
// into the buffer of the SSRC's read stream: one hand-off. pion's track
// reader, its interceptors (NACK generator, receiver reports, TWCC) and the
// router's up-track read it as before. Everything else, STUN, DTLS, RTCP,
// the first packets of a stream, packets from an address other than the
// selected pair's, and a packet the direct path cannot authenticate, takes
// pion's path as before.
//
// Each stream has one state for both paths (inStream): pion's decrypted
// packets pass through it on their way into the buffer, so that the rollover
// counter the direct path guesses indexes with follows every packet, and
// one replay window (RFC 3711 section 3.3.2) judges them all: a packet
// replayed from another address, which pion's own window (that never saw
// the direct path's packets) lets through, is dropped here.
//
// pion's ICE agent no longer sees the media arrive; it pings the client
// when it has not heard from it for a keepalive interval, and the answers
// keep the connection alive (see Config.KeepaliveInterval).

// ingress is the direct ingress path's state of one peer: its opener, set
// once DTLS is up, and its streams.
type ingress struct {
	count *counters
	log   *slog.Logger

	// open is the peer's opener: its remote keys' sealer; nil until
	// DTLS is up, and for a profile without one.
	open atomic.Pointer[opener]

	mu      sync.RWMutex
	streams map[uint32]*inStream
}

// opener authenticates and decrypts what the peer sends: a sealer made
// from the session's remote keys, of one kind or the other.
type opener struct {
	gcm *gcmSealer
	cm  *cmSealer
}

// newOpener returns the opener of a session's remote keys k, or nil for a
// profile without a sealer.
func newOpener(k srtpKeys) *opener {
	if g, err := newGCMSealer(k); err == nil {
		return &opener{gcm: g}
	}
	if c, err := newCMSealer(k); err == nil {
		return &opener{cm: c}
	}
	return nil
}

// tagLen is the length of the SRTP authentication tag o checks.
func (o *opener) tagLen() int {
	if o.gcm != nil {
		return gcmTagLen
	}
	return cmTagLen
}

// maxAuthFailures is how many packets in a row of one stream may fail to
// authenticate on the direct path before it leaves the stream to pion: a
// stream whose rollover counter it lost (which pion may still know) keeps
// working, and costs one failed check per packet only this long.
const maxAuthFailures = 16

// replayWindow is the width of a stream's replay window, in packets: as
// pion's default.
const replayWindow = 64

// inStream is one SSRC's read stream as the direct path sees it: the
// buffer pion made for it, which its reader reads, and the rollover and
// replay state of what both paths put there.
type inStream struct {
	inner io.ReadWriteCloser
	ssrc  uint32
	in    *ingress

	mu      sync.Mutex
	started bool
	top     uint64 // the highest index received: ROC · 2^16 + s_l
	window  uint64 // bit i: the packet of index top−i was received
	fails   int    // packets in a row that did not authenticate
	off     bool   // the stream is left to pion

	nonce   [gcmNonceLen]byte
	cm      *cmState
	scratch []byte // AES-GCM's plaintext (the datagram stays intact)
}

// newStream registers the read stream of ssrc whose buffer is inner, and
// returns the buffer pion gets for it.
func (in *ingress) newStream(ssrc uint32, inner io.ReadWriteCloser) *inStream {
	s := &inStream{inner: inner, ssrc: ssrc, in: in}
	in.mu.Lock()
	if in.streams == nil {
		in.streams = make(map[uint32]*inStream)
	}
	in.streams[ssrc] = s
	in.mu.Unlock()
	return s
}

func (in *ingress) stream(ssrc uint32) *inStream {
	in.mu.RLock()
	s := in.streams[ssrc]
	in.mu.RUnlock()
	return s
}

// Read reads what either path wrote, for pion's read stream.
func (s *inStream) Read(b []byte) (int, error) { return s.inner.Read(b) }

// Write is pion's path: p is an RTP packet its SRTP session decrypted and
// authenticated. It goes into the buffer unless the replay window has had
// it already.
func (s *inStream) Write(p []byte) (int, error) {
	if len(p) < 12 {
		return s.inner.Write(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	index, ok := s.guess(binary.BigEndian.Uint16(p[2:4]))
	if !ok || !s.fresh(index) {
		s.in.count.ingressReplays.Add(1)
		return len(p), nil
	}
	s.accept(index)
	return s.inner.Write(p)
}

// Close ends the stream: pion closes its read stream.
func (s *inStream) Close() error {
	s.in.mu.Lock()
	if s.in.streams[s.ssrc] == s {
		delete(s.in.streams, s.ssrc)
	}
	s.in.mu.Unlock()
	return s.inner.Close()
}

// guess returns the packet index of sequence number seq (RFC 3711
// section 3.3.1 and appendix A): the one closest to the highest received.
// It is false for a packet before the stream's first wrap.
func (s *inStream) guess(seq uint16) (uint64, bool) {
	if !s.started {
		return uint64(seq), true
	}
	roc, high := s.top>>16, uint16(s.top)
	switch {
	case high < 1<<15 && seq > high && seq-high > 1<<15:
		if roc == 0 {
			return 0, false
		}
		roc--
	case high >= 1<<15 && seq < high-1<<15:
		roc++
	}
	return roc<<16 | uint64(seq), true
}

// fresh reports whether index is new to the replay window.
func (s *inStream) fresh(index uint64) bool {
	if !s.started || index > s.top {
		return true
	}
	d := s.top - index
	return d < replayWindow && s.window&(1<<d) == 0
}

// accept notes index, found fresh, as received.
func (s *inStream) accept(index uint64) {
	switch {
	case !s.started:
		s.started, s.window = true, 1
	case index > s.top:
		if d := index - s.top; d < replayWindow {
			s.window = s.window<<d | 1
		} else {
			s.window = 1
		}
	default:
		s.window |= 1 << (s.top - index)
		return
	}
	s.top = index
}

// receive is the direct path for datagram b from the peer's selected
// address. It reports whether it took b: written to its stream's buffer,
// or dropped as a replay. Anything it does not take goes to pion, as it
// was.
func (in *ingress) receive(b []byte) bool {
	o := in.open.Load()
	if o == nil {
		return false
	}
	hdrLen, ok := srtpHeaderLen(b, o.tagLen())
	if !ok {
		return false
	}
	s := in.stream(binary.BigEndian.Uint32(b[8:12]))
	if s == nil {
		return false // a stream pion has not seen yet: its first packets
	}
	return s.receive(b, hdrLen, o)
}

func (s *inStream) receive(b []byte, hdrLen int, o *opener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.off {
		return false
	}
	index, ok := s.guess(binary.BigEndian.Uint16(b[2:4]))
	if !ok {
		return false
	}
	if !s.fresh(index) {
		// Too old or seen: whether a replay or a forgery, no path takes it.
		s.in.count.ingressReplays.Add(1)
		return true
	}
	var pkt []byte
	if o.gcm != nil {
		if s.scratch == nil {
			s.scratch = make([]byte, 1500)
		}
		pkt, ok = o.gcm.open(s.scratch, b, hdrLen, s.ssrc, index, &s.nonce)
	} else {
		if s.cm == nil {
			s.cm = o.cm.newState()
		}
		pkt, ok = o.cm.open(b, hdrLen, s.ssrc, index, s.cm)
	}
	if !ok {
		s.in.count.ingressFallback.Add(1)
		if s.fails++; s.fails == maxAuthFailures {
			s.off = true
			s.in.log.Info("direct ingress leaves a stream to pion: its packets do not authenticate", "ssrc", s.ssrc)
		}
		return false
	}
	s.fails = 0
	s.accept(index)
	s.in.count.ingressDirect.Add(1)
	_, _ = s.inner.Write(pkt) // a full buffer counts the drop
	return true
}

// srtpHeaderLen returns the length of the RTP header of SRTP packet b with
// a tag of tagLen, if b is SRTP (RFC 7983: first byte 128–191; RFC 5761:
// not an RTCP packet type) and long enough for its header, CSRCs,
// extension and tag.
//
// Written here rather than with rtp.Header.Unmarshal, which parses every
// extension into the header to find the same length.
func srtpHeaderLen(b []byte, tagLen int) (int, bool) {
	if _, _, ok := stamp.RTP(b); !ok {
		return 0, false
	}
	n := 12 + 4*int(b[0]&0x0f)
	if b[0]&0x10 != 0 {
		if len(b) < n+4 {
			return 0, false
		}
		n += 4 + 4*int(binary.BigEndian.Uint16(b[n+2:]))
	}
	if len(b) < n+tagLen || len(b) > 1500 {
		return 0, false
	}
	return n, true
}

// routes are a socket's peers with a direct ingress path, by the remote
// address of their selected candidate pair.
type routes struct {
	// n is len(m), so that the reader of a socket no peer is routed on
	// (a peer's own, before it connects) takes no lock.
	n  atomic.Int32
	mu sync.RWMutex
	m  map[netip.AddrPort]*ingress
}

// set routes the packets from addr to in.
func (r *routes) set(addr netip.AddrPort, in *ingress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[netip.AddrPort]*ingress)
	}
	r.m[addr] = in
	r.n.Store(int32(len(r.m)))
}

// remove forgets addr's route, if it is still in's.
func (r *routes) remove(addr netip.AddrPort, in *ingress) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m[addr] == in {
		delete(r.m, addr)
	}
	r.n.Store(int32(len(r.m)))
}

// lookup returns the ingress of the peer at addr, if any.
func (r *routes) lookup(addr netip.AddrPort) *ingress {
	if r.n.Load() == 0 {
		return nil
	}
	r.mu.RLock()
	in := r.m[netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())]
	r.mu.RUnlock()
	return in
}
