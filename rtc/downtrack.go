package rtc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/rtc/codec"
)

// DownTrack is one outgoing stream of a subscriber: what it receives on one
// m-line, audio or video. A policy outside it chooses its source
// (SetSource); the DownTrack turns whatever up-tracks it carries into one
// valid, continuous RTP stream: its own SSRC, the payload type the
// subscriber negotiated for the source's codec, sequence numbers and
// timestamps that run on across source switches, and only the header
// extensions the receiver negotiated (a stray mid extension makes browsers
// drop packets). A video down-track starts, and switches sources, only at a
// keyframe, and asks the source for one meanwhile.
//
// Sequence numbers are rewritten on 64-bit extended numbers (RFC 3550
// appendix A.1): each source's numbers are unwrapped as they come, so an
// offset never has to reason about a 16-bit wrap, and a late packet from
// before a wrap is told from one after it.
//
// DownTrack implements webrtc.TrackLocal. pion's TrackLocalStaticRTP cannot
// be used: it passes sequence numbers and timestamps through unchanged.
type DownTrack struct {
	peer     *Peer
	id       string
	streamID string
	kind     webrtc.RTPCodecType

	// source is the up-track the down-track carries now.
	source atomic.Pointer[UpTrack]

	// sender is the pion sender of the down-track's m-line (nil in tests
	// without a connection). Its RTCP is read from the first SetSource on
	// (reading): until the down-track has a source it sends nothing, so
	// its receiver has nothing to ask for, and a listener's slots that
	// never carry anybody cost no goroutine.
	sender  *webrtc.RTPSender
	reading atomic.Bool

	mu      sync.Mutex
	writer  webrtc.TrackLocalWriter // nil until bound
	ssrc    uint32
	codecs  []boundCodec // what the receiver negotiated
	levelID uint8        // receiver's audio level extension id; 0: not negotiated
	nack    bool         // the receiver negotiated NACK

	last      *UpTrack // source of the last packet written
	lastPT    uint8    // payload type for last
	clockRate uint32   // of last's codec
	in        unwrapper
	srcFirst  uint64 // extended number (in) of last's first packet written
	started   bool
	firstSeq  uint64 // extended number of the first packet sent
	seqOffset uint64 // extended out = extended in + seqOffset (mod 2^64)
	tsOffset  uint32
	lastSeq   uint64 // highest extended sequence number sent
	sent      uint64 // bit i: sequence number lastSeq-i went out
	lastTS    uint32
	lastAt    int64 // unix ns of the last write

	hdr   rtp.Header
	ext   [1]rtp.Extension
	level [1]byte

	// The direct egress path (egress.go), once the down-track has sent
	// on it: the peer's sealer, AES-GCM (sealer) or AES-CM (cm, with the
	// down-track's own cmState), or for another SRTP profile a pion
	// context of the down-track's own.
	sealer  *gcmSealer
	nonce   [gcmNonceLen]byte
	cm      *cmSealer
	cmState *cmState
	srtp    *srtp.Context
	scratch rtp.Header
	// history says what went out under each recent sequence number, so
	// that a NACK is answered from the source's packet cache (not from a
	// copy per subscriber).
	history []sentPacket
	// NACK answers are rebuilt here.
	resent    rtp.Packet
	resendRaw []byte
	resendBuf []byte
	// limit bounds the NACK answers (nack.go); it has a mark for each
	// packet of history.
	limit nackLimiter

	// Counts, under mu like everything above: the writes that change
	// them hold it anyway, and a count read now and then (sender
	// reports, Stats) may wait for one copy.
	written     uint64 // packets sent
	bytes       uint64 // their payload bytes
	drops       uint64 // packets held back waiting for a keyframe
	nackResent  uint64 // packets sent again for NACKs
	nackRefused uint64 // NACKed packets not sent again (see nackLimiter)
}

// boundCodec is one codec the receiver accepted on the down-track's m-line.
type boundCodec struct {
	mime      string
	pt        uint8
	clockRate uint32
}

// unwrapper extends 16-bit sequence numbers to 64 bits (RFC 3550 A.1).
type unwrapper struct {
	max uint64 // highest extended number seen; 0: none yet
}

// extend returns the extended number of seq: the one nearest the highest
// seen so far. The first number starts at 1<<16, so that a packet from
// just before it still has a number.
func (u *unwrapper) extend(seq uint16) uint64 {
	if u.max == 0 {
		u.max = 1<<16 | uint64(seq)
		return u.max
	}
	ext := u.max + uint64(int64(int16(seq-uint16(u.max))))
	if int64(ext-u.max) > 0 {
		u.max = ext
	}
	return ext
}

func newDownTrack(p *Peer, kind webrtc.RTPCodecType, index int) *DownTrack {
	return &DownTrack{
		peer:     p,
		kind:     kind,
		id:       kind.String() + strconv.Itoa(index),
		streamID: "beep-" + p.Claim.ClientID,
	}
}

// ID is the track id (unique within the peer connection).
func (s *DownTrack) ID() string { return s.id }

// RID is empty: down-tracks have no simulcast layers.
func (s *DownTrack) RID() string { return "" }

// StreamID is the media stream id the receiver sees.
func (s *DownTrack) StreamID() string { return s.streamID }

// Kind is audio or video.
func (s *DownTrack) Kind() webrtc.RTPCodecType { return s.kind }

// errNoCodec is returned by Bind when the receiver accepted none of the
// router's codecs for the down-track's kind.
var errNoCodec = errors.New("receiver negotiated no codec the router forwards")

// Bind is called by pion when the sender starts. It keeps every codec the
// receiver accepted: the payload type of each packet follows its source's
// codec.
func (s *DownTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	var codecs []boundCodec
	var first webrtc.RTPCodecParameters
	nack := false
	for _, c := range ctx.CodecParameters() {
		if !codec.Supported(c.MimeType) || codec.IsVideo(c.MimeType) != (s.kind == webrtc.RTPCodecTypeVideo) {
			continue
		}
		if len(codecs) == 0 {
			first = c
		}
		codecs = append(codecs, boundCodec{mime: strings.ToLower(c.MimeType), pt: uint8(c.PayloadType), clockRate: c.ClockRate})
		for _, fb := range c.RTCPFeedback {
			if fb.Type == webrtc.TypeRTCPFBNACK && fb.Parameter == "" {
				nack = true
			}
		}
	}
	if len(codecs) == 0 {
		return webrtc.RTPCodecParameters{}, errNoCodec
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writer = ctx.WriteStream()
	s.ssrc = uint32(ctx.SSRC())
	s.codecs = codecs
	s.nack = nack
	s.levelID = 0
	for _, e := range ctx.HeaderExtensions() {
		if e.URI == sdp.AudioLevelURI {
			s.levelID = uint8(e.ID)
		}
	}
	return first, nil
}

// Unbind is called by pion when the sender stops.
func (s *DownTrack) Unbind(webrtc.TrackLocalContext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writer = nil
	return nil
}

// SetSource binds the down-track to up-track t (nil: none). The next
// packet of t continues the down-track's stream; for video, the next
// keyframe of t, which the down-track asks t for. The first source starts
// the reader of the receiver's RTCP for the down-track (NACKs, PLIs).
func (s *DownTrack) SetSource(t *UpTrack) {
	if t != nil && s.sender != nil && !s.reading.Load() && s.reading.CompareAndSwap(false, true) {
		s.peer.goroutine(func() { s.peer.readFeedback(s, s.sender) })
	}
	if old := s.source.Swap(t); old != t && t != nil && s.kind == webrtc.RTPCodecTypeVideo {
		t.RequestKeyframe()
	}
}

// Source returns the up-track the down-track carries, or nil.
func (s *DownTrack) Source() *UpTrack { return s.source.Load() }

// Peer returns the subscriber's peer.
func (s *DownTrack) Peer() *Peer { return s.peer }

// Stats returns the packets and payload bytes the down-track has sent, and
// the packets it held back while waiting for a keyframe.
func (s *DownTrack) Stats() (packets, bytes, waitingForKeyframe uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written, s.bytes, s.drops
}

// Retransmissions returns the packets the down-track sent again for its
// receiver's NACKs, and the NACKed packets it refused to: asked for again
// less than nackWindow after their last retransmission, or beyond the
// retransmission budget that the down-track's own packets refill (see
// nackLimiter). Only the direct egress path counts here: the pion path's
// refusals are counted by its nackGuard.
func (s *DownTrack) Retransmissions() (resent, refused uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nackResent, s.nackRefused
}

// codecFor returns the receiver's payload type and clock rate for mime.
// Callers hold s.mu.
func (s *DownTrack) codecFor(mime string) (boundCodec, bool) {
	for _, c := range s.codecs {
		if c.mime == mime {
			return c, true
		}
	}
	return boundCodec{}, false
}

// Write forwards one packet p of src at now (unix ns), building the copy
// in buf (see SendBuffer; Flush it once the packet is written to every
// down-track). levelByte is the RFC 6464 byte to send when hasLevel. A
// packet from an up-track that is not the down-track's source is dropped:
// it reports false. So is a packet that would reuse a sequence number the
// down-track has already sent (a duplicate, or a late packet of a new
// source): SRTP would encrypt two packets under one nonce; and a late
// packet of the source from before its first packet written, which has
// no place in the stream (and, before the down-track's first packet, no
// SRTP index: see srtpIndex). A video down-track drops a new source's
// packets until its first keyframe.
//
// The down-track's lock is held from the choice of the sequence number to
// the send. Around a speaker switch the old and the new source's packets
// reach a down-track from different goroutines (each source's forwarder,
// or a fan-out worker), and the lock is what makes each extended sequence
// number, so each SRTP nonce, go to one packet only, and the copies leave
// in the order of their numbers' choice.
func (s *DownTrack) Write(buf *SendBuffer, src *UpTrack, p *rtp.Packet, levelByte byte, hasLevel bool, now int64) (bool, error) {
	if s.source.Load() != src {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writer == nil {
		return false, nil
	}
	h := outHeader{pt: s.lastPT, marker: p.Marker, level: levelByte, hasLevel: hasLevel}
	var in uint64
	if src != s.last {
		c, ok := s.codecFor(src.mime)
		if !ok {
			return false, nil // the receiver cannot decode this source
		}
		if src.Kind == webrtc.RTPCodecTypeVideo && !codec.Keyframe(src.mime, p.Payload) {
			s.drops++
			src.RequestKeyframe()
			return false, nil
		}
		s.in = unwrapper{}
		in = s.in.extend(p.SequenceNumber)
		s.srcFirst = in
		if s.started {
			// Continue the stream: the next sequence number, and a
			// timestamp advanced by the wall-clock time since the last
			// packet (at least 20 ms), so that the receiver's jitter
			// buffer sees a talkspurt or a new picture, not a jump.
			// Packets of different sources reach the down-track in the
			// order their readers get to it, not always in arrival
			// order: now may be before lastAt.
			frame := c.clockRate / 50
			elapsed := frame
			if d := now - s.lastAt; d > 20*int64(time.Millisecond) {
				elapsed = uint32(uint64(d) * uint64(c.clockRate) / 1e9)
			}
			s.seqOffset = s.lastSeq + 1 - in
			s.tsOffset = s.lastTS + elapsed - p.Timestamp
		} else {
			s.seqOffset = 0
			s.tsOffset = 0
		}
		s.last, s.lastPT, s.clockRate, h.pt = src, c.pt, c.clockRate, c.pt
		h.marker = h.marker || src.Kind == webrtc.RTPCodecTypeAudio
	} else if in = s.in.extend(p.SequenceNumber); in < s.srcFirst {
		return false, nil // from before the source's first packet
	}
	h.seq = in + s.seqOffset
	h.ts = p.Timestamp + s.tsOffset
	if !s.markSent(h.seq) {
		return false, nil
	}
	if int64(h.seq-s.lastSeq) >= 0 {
		s.lastSeq, s.lastTS = h.seq, h.ts
	}
	s.lastAt = now

	if e := s.peer.egress.Load(); e != nil || s.direct() {
		out, err := s.writeDirect(e, h, p.Payload, buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return false, nil
			}
			return false, err
		}
		if s.history != nil {
			s.history[uint16(h.seq)%uint16(len(s.history))] = sentPacket{
				seq: h.seq, ok: true, src: src, srcSeq: p.SequenceNumber,
				tsOffset: s.tsOffset, pt: h.pt, marker: h.marker, level: levelByte, hasLevel: hasLevel,
			}
			// A retransmission is the same bytes again: out's length.
			s.limit.sent(uint16(h.seq), len(out))
		}
	} else if _, err := s.writer.WriteRTP(s.header(h), p.Payload); err != nil {
		if errors.Is(err, io.ErrClosedPipe) {
			return false, nil
		}
		return false, err
	}
	s.written++
	s.bytes += uint64(len(p.Payload))
	return true, nil
}

// outHeader is what the header of one of the down-track's packets says,
// besides the SSRC.
type outHeader struct {
	seq      uint64 // extended sequence number: the SRTP index comes from it
	ts       uint32
	pt       uint8
	marker   bool
	level    byte // RFC 6464 byte, sent if hasLevel and negotiated
	hasLevel bool
}

// direct reports whether the down-track has encrypted its own packets
// (egress.go): then it never writes through pion again. Callers hold s.mu.
func (s *DownTrack) direct() bool { return s.sealer != nil || s.cm != nil || s.srtp != nil }

// header fills the down-track's reused header for pion's write path.
// Callers hold s.mu.
func (s *DownTrack) header(o outHeader) *rtp.Header {
	h := &s.hdr
	h.Version = 2
	h.Padding = false
	h.Marker = o.marker
	h.PayloadType = o.pt
	h.SequenceNumber = uint16(o.seq)
	h.Timestamp = o.ts
	h.SSRC = s.ssrc
	h.CSRC = nil
	h.Extension = false
	h.Extensions = s.ext[:0] // reused: SetExtension appends within capacity
	if o.hasLevel && s.levelID != 0 {
		s.level[0] = o.level
		// Cannot fail: the id is 1 to 14 and the value one byte.
		_ = h.SetExtension(s.levelID, s.level[:])
	}
	return h
}

// markSent records that extended sequence number seq goes out, in a window
// of the last 64, and reports false if it went out before or is older than
// the window. The first packet starts the window.
func (s *DownTrack) markSent(seq uint64) bool {
	if !s.started {
		s.started = true
		s.firstSeq, s.lastSeq = seq, seq
		s.sent = 1
		return true
	}
	d := int64(seq - s.lastSeq)
	switch {
	case d > 0:
		if d >= 64 {
			s.sent = 1
		} else {
			s.sent = s.sent<<d | 1
		}
		return true
	case d <= -64 || s.sent&(1<<-d) != 0:
		return false
	default:
		s.sent |= 1 << -d
		return true
	}
}

// errNoRoute is returned for a down-track that encrypts its own packets when its
// peer has no direct route (any more): it may not fall back to pion's SRTP
// context, which would reuse its nonces.
var errNoRoute = errors.New("down-track: no direct route to the receiver")

// maxPacket bounds an outgoing RTP packet: header, one extension, payload.
// srtpOverhead is room for SRTP's authentication tag.
const (
	maxPacket    = 1500
	srtpOverhead = 16
)

// sentPacket is what went out under one sequence number: enough to build
// the packet again from its source's cache.
type sentPacket struct {
	seq      uint64 // extended
	ok       bool
	src      *UpTrack
	srcSeq   uint16
	tsOffset uint32
	pt       uint8
	marker   bool
	level    byte
	hasLevel bool
}

// History sizes: how many sent packets a down-track can answer NACKs for,
// when its receiver negotiated NACK. Audio: 1.28 s of 20 ms frames, as for
// pion's responder. Video: 512 packets, about a second of 2 Mbit/s.
const (
	audioHistory = 64
	videoHistory = 512
)

// writeDirect writes h and payload into a buffer of b, encrypts them in
// place (see seal) and sends the packet on e's socket (see egress.go): at
// once, or queued in b when the socket takes batches. It returns the
// encrypted packet. Callers hold s.mu.
func (s *DownTrack) writeDirect(e *egress, h outHeader, payload []byte, b *SendBuffer) ([]byte, error) {
	if e == nil {
		return nil, errNoRoute
	}
	if !s.direct() {
		switch {
		case e.sealer != nil:
			s.sealer = e.sealer
		case e.cm != nil:
			s.cm, s.cmState = e.cm, e.cm.newState()
		default:
			ctx, err := srtp.CreateContext(e.key, e.salt, e.profile)
			if err != nil {
				return nil, fmt.Errorf("down-track SRTP context: %w", err)
			}
			s.srtp = ctx
		}
		if s.nack {
			n, burst := audioHistory, audioResendBurst
			if s.kind == webrtc.RTPCodecTypeVideo {
				n, burst = videoHistory, videoResendBurst
			}
			s.history = make([]sentPacket, n)
			s.limit = newNackLimiter(n, burst)
		}
	}
	buf := b.buffer(e.batch)
	out, err := s.seal(h, payload, buf)
	if err != nil {
		return nil, err
	}
	if e.batch != nil {
		b.queue(out, e.addr)
		return out, nil
	}
	_, err = e.conn.WriteToUDPAddrPort(out, e.to)
	return out, err
}

// errSRTPIndex refuses a packet without an SRTP index: one from before the
// down-track's first, or past the packets a master key may protect.
var errSRTPIndex = errors.New("down-track: sequence number has no SRTP index")

// seal writes h's header and payload into buf and encrypts them in place:
// with the peer's sealer, under the index of h's extended sequence number,
// or, for another SRTP profile, with the down-track's pion context, which
// parses the header again and works out the index from its own count of
// wraps. Both write over the plaintext, which AES-GCM and AES-CM allow.
// The same h and payload give the same bytes again (a NACK's answer).
// Callers hold s.mu.
func (s *DownTrack) seal(h outHeader, payload, buf []byte) ([]byte, error) {
	var levelID uint8
	if h.hasLevel {
		levelID = s.levelID
	}
	hdrLen := putHeader(buf, h.pt, h.marker, uint16(h.seq), h.ts, s.ssrc, levelID, h.level)
	if hdrLen+len(payload)+srtpOverhead > len(buf) {
		return nil, fmt.Errorf("RTP packet of %d bytes: too large", hdrLen+len(payload))
	}
	n := hdrLen + copy(buf[hdrLen:], payload)
	if s.sealer != nil || s.cm != nil {
		index, ok := srtpIndex(h.seq, s.firstSeq)
		if !ok {
			return nil, errSRTPIndex
		}
		if s.cm != nil {
			return s.cm.seal(buf, hdrLen, n, s.ssrc, index, s.cmState), nil
		}
		return s.sealer.seal(buf, hdrLen, n, s.ssrc, index, &s.nonce), nil
	}
	out, err := s.srtp.EncryptRTP(buf[:0], buf[:n], &s.scratch)
	if err != nil {
		return nil, fmt.Errorf("SRTP encrypt: %w", err)
	}
	return out, nil
}

// resend sends again the packets of seqs that the down-track's history and
// their sources' caches still hold (NACK): the same header, the same
// payload under the same SRTP index, so the same bytes as the first time
// (a nonce used again on the same plaintext tells an eavesdropper nothing
// new). It reports how many it sent. A packet resent less than nackWindow
// ago is not sent again, nor any beyond the budget the down-track's own
// packets refill (see nackLimiter); those are counted (Retransmissions).
// pion's NACK responder answers for packets written through pion (bounded
// by nackGuard).
func (s *DownTrack) resend(seqs []uint16) int {
	return s.resendAt(seqs, time.Now().UnixNano())
}

// resendAt is resend at now (unix ns).
func (s *DownTrack) resendAt(seqs []uint16, now int64) int {
	e := s.peer.egress.Load()
	if e == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.history == nil {
		return 0
	}
	if s.resendBuf == nil {
		s.resendBuf = make([]byte, maxPacket+srtpOverhead)
	}
	sent := 0
	defer func() { s.nackResent += uint64(sent) }()
	for _, seq := range seqs {
		m := s.history[seq%uint16(len(s.history))]
		if !m.ok || uint16(m.seq) != seq {
			continue
		}
		switch s.limit.allow(seq, now) {
		case nackUnknown:
			continue
		case nackDuplicate, nackOverBudget:
			s.nackRefused++
			continue
		}
		raw, ok := m.src.cache.get(m.srcSeq, s.resendRaw[:0])
		if !ok {
			continue
		}
		s.resendRaw = raw
		if err := s.resent.Unmarshal(raw); err != nil {
			continue
		}
		h := outHeader{seq: m.seq, ts: s.resent.Timestamp + m.tsOffset, pt: m.pt, marker: m.marker, level: m.level, hasLevel: m.hasLevel}
		out, err := s.seal(h, s.resent.Payload, s.resendBuf)
		if err != nil {
			continue
		}
		if _, err := e.conn.WriteToUDPAddrPort(out, e.to); err != nil {
			return sent
		}
		sent++
	}
	return sent
}

// counts returns the packets and payload bytes sent, and the NACKed
// packets refused.
func (s *DownTrack) counts() (packets, bytes, nackRefused uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.written, s.bytes, s.nackRefused
}
