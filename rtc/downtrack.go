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
)

// DownTrack is one outgoing stream of a subscriber: what it receives on one
// m-line. A policy outside it chooses its source (SetSource); the DownTrack
// turns whatever up-tracks it carries into one valid, continuous RTP
// stream: its own SSRC and payload type, sequence numbers and timestamps
// that run on across source switches, and only the header extensions the
// receiver negotiated (a stray mid extension makes browsers drop packets).
//
// DownTrack implements webrtc.TrackLocal. pion's TrackLocalStaticRTP cannot
// be used: it passes sequence numbers and timestamps through unchanged.
type DownTrack struct {
	peer     *Peer
	id       string
	streamID string

	// source is the up-track the down-track carries now.
	source atomic.Pointer[UpTrack]

	mu      sync.Mutex
	writer  webrtc.TrackLocalWriter // nil until bound
	ssrc    uint32
	pt      uint8
	levelID uint8 // receiver's audio level extension id; 0: not negotiated
	nack    bool  // the receiver negotiated NACK

	last      *UpTrack // source of the last packet written
	started   bool
	seqOffset uint16
	tsOffset  uint32
	lastSeq   uint16
	sent      uint64 // bit i: sequence number lastSeq-i went out
	lastTS    uint32
	lastAt    int64 // unix ns of the last write

	hdr   rtp.Header
	ext   [1]rtp.Extension
	level [1]byte

	// The direct egress path (egress.go): the down-track's own SRTP
	// context, once it has sent with it.
	srtp    *srtp.Context
	scratch rtp.Header
	cache   []sentPacket // NACK retransmission cache, when nack

	written atomic.Uint64
	bytes   atomic.Uint64
}

func newDownTrack(p *Peer, index int) *DownTrack {
	return &DownTrack{
		peer:     p,
		id:       "down-track" + strconv.Itoa(index),
		streamID: "beep-" + p.Claim.ClientID,
	}
}

// ID is the track id (unique within the peer connection).
func (s *DownTrack) ID() string { return s.id }

// RID is empty: down-tracks have no simulcast layers.
func (s *DownTrack) RID() string { return "" }

// StreamID is the media stream id the receiver sees.
func (s *DownTrack) StreamID() string { return s.streamID }

// Kind is audio.
func (s *DownTrack) Kind() webrtc.RTPCodecType { return webrtc.RTPCodecTypeAudio }

// errNoOpus is returned by Bind when the receiver did not accept Opus.
var errNoOpus = errors.New("receiver did not negotiate opus")

// Bind is called by pion when the sender starts.
func (s *DownTrack) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
	for _, c := range ctx.CodecParameters() {
		if !strings.EqualFold(c.MimeType, webrtc.MimeTypeOpus) {
			continue
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.writer = ctx.WriteStream()
		s.ssrc = uint32(ctx.SSRC())
		s.pt = uint8(c.PayloadType)
		s.levelID = 0
		s.nack = false
		for _, fb := range c.RTCPFeedback {
			if fb.Type == webrtc.TypeRTCPFBNACK && fb.Parameter == "" {
				s.nack = true
			}
		}
		for _, e := range ctx.HeaderExtensions() {
			if e.URI == sdp.AudioLevelURI {
				s.levelID = uint8(e.ID)
			}
		}
		return c, nil
	}
	return webrtc.RTPCodecParameters{}, errNoOpus
}

// Unbind is called by pion when the sender stops.
func (s *DownTrack) Unbind(webrtc.TrackLocalContext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writer = nil
	return nil
}

// SetSource binds the down-track to up-track t (nil: none). The next
// packet of t continues the down-track's stream.
func (s *DownTrack) SetSource(t *UpTrack) { s.source.Store(t) }

// Source returns the up-track the down-track carries, or nil.
func (s *DownTrack) Source() *UpTrack { return s.source.Load() }

// Peer returns the subscriber's peer.
func (s *DownTrack) Peer() *Peer { return s.peer }

// Write forwards one packet p of src at now (unix ns), building the copy
// in buf (see SendBuffer; Flush it once the packet is written to every
// down-track). levelByte is the RFC 6464 byte to send when hasLevel. A
// packet from an up-track that is not the down-track's source is dropped:
// it reports false. So is a packet that would reuse a sequence number the
// down-track has already sent (a duplicate, or a late packet of a new
// source): SRTP would encrypt two packets under one nonce.
func (s *DownTrack) Write(buf *SendBuffer, src *UpTrack, p *rtp.Packet, levelByte byte, hasLevel bool, now int64) (bool, error) {
	if s.source.Load() != src {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writer == nil {
		return false, nil
	}
	marker := p.Marker
	if src != s.last {
		if s.started {
			// Continue the stream: the next sequence number, and a
			// timestamp advanced by the wall-clock time since the last
			// packet (at least one 20 ms frame), so that the receiver's
			// jitter buffer sees a talkspurt start, not a jump.
			// Packets of different speakers reach the down-track in the order
			// their readers get to it, not always in arrival order: now
			// may be before lastAt.
			elapsed := uint32(960)
			if d := now - s.lastAt; d > 20*int64(time.Millisecond) {
				elapsed = uint32(d * 48 / 1e6)
			}
			s.seqOffset = s.lastSeq + 1 - p.SequenceNumber
			s.tsOffset = s.lastTS + elapsed - p.Timestamp
		}
		s.last = src
		marker = true
	}
	seq := p.SequenceNumber + s.seqOffset
	ts := p.Timestamp + s.tsOffset
	if !s.markSent(seq) {
		return false, nil
	}
	if int16(seq-s.lastSeq) >= 0 {
		s.lastSeq, s.lastTS = seq, ts
	}
	s.lastAt = now

	h := &s.hdr
	h.Version = 2
	h.Padding = false
	h.Marker = marker
	h.PayloadType = s.pt
	h.SequenceNumber = seq
	h.Timestamp = ts
	h.SSRC = s.ssrc
	h.CSRC = nil
	h.Extension = false
	h.Extensions = s.ext[:0] // reused: SetExtension appends within capacity
	if hasLevel && s.levelID != 0 {
		s.level[0] = levelByte
		if err := h.SetExtension(s.levelID, s.level[:]); err != nil {
			return false, err
		}
	}
	if e := s.peer.egress.Load(); e != nil || s.srtp != nil {
		if err := s.writeDirect(e, h, p.Payload, buf); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return false, nil
			}
			return false, err
		}
	} else if _, err := s.writer.WriteRTP(h, p.Payload); err != nil {
		if errors.Is(err, io.ErrClosedPipe) {
			return false, nil
		}
		return false, err
	}
	s.written.Add(1)
	s.bytes.Add(uint64(len(p.Payload)))
	return true, nil
}

// markSent records that seq goes out, in a window of the last 64 sequence
// numbers, and reports false if it went out before or is older than the
// window. The first packet starts the window.
func (s *DownTrack) markSent(seq uint16) bool {
	if !s.started {
		s.started = true
		s.lastSeq = seq
		s.sent = 1
		return true
	}
	d := int(int16(seq - s.lastSeq))
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

// sentPacket is one packet kept for retransmission.
type sentPacket struct {
	seq uint16
	ok  bool
	b   []byte
}

// nackCache is how many sent packets a down-track keeps when its receiver
// negotiated NACK: 1.28 s of 20 ms frames, as for pion's responder.
const nackCache = 64

// writeDirect encrypts h and payload with the down-track's SRTP context, in place
// in a buffer of b, and sends the packet on e's socket (see egress.go): at
// once, or queued in b when the socket takes batches. Callers hold s.mu.
func (s *DownTrack) writeDirect(e *egress, h *rtp.Header, payload []byte, b *SendBuffer) error {
	if e == nil {
		return errNoRoute
	}
	if s.srtp == nil {
		ctx, err := srtp.CreateContext(e.key, e.salt, e.profile)
		if err != nil {
			return fmt.Errorf("down-track SRTP context: %w", err)
		}
		s.srtp = ctx
		if s.nack {
			s.cache = make([]sentPacket, nackCache)
		}
	}
	buf := b.buffer(e.batch)
	n, err := h.MarshalTo(buf)
	if err != nil {
		return fmt.Errorf("marshal RTP header: %w", err)
	}
	if n+len(payload)+srtpOverhead > len(buf) {
		return fmt.Errorf("RTP packet of %d bytes: too large", n+len(payload))
	}
	n += copy(buf[n:], payload)
	// In place: pion marshals the header again over itself and seals the
	// payload onto itself, which AES-GCM and AES-CM allow.
	out, err := s.srtp.EncryptRTP(buf[:0], buf[:n], &s.scratch)
	if err != nil {
		return fmt.Errorf("SRTP encrypt: %w", err)
	}
	if s.cache != nil {
		c := &s.cache[h.SequenceNumber%nackCache]
		c.seq, c.ok = h.SequenceNumber, true
		c.b = append(c.b[:0], out...)
	}
	if e.batch != nil {
		b.queue(out, e.addr)
		return nil
	}
	_, err = e.conn.WriteToUDPAddrPort(out, e.to)
	return err
}

// resend sends again the packets of seqs the down-track still has (NACK). It
// reports how many it sent. pion's NACK responder answers for packets
// written through pion.
func (s *DownTrack) resend(seqs []uint16) int {
	e := s.peer.egress.Load()
	if e == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		return 0
	}
	sent := 0
	for _, seq := range seqs {
		c := &s.cache[seq%nackCache]
		if !c.ok || c.seq != seq {
			continue
		}
		if _, err := e.conn.WriteToUDPAddrPort(c.b, e.to); err != nil {
			return sent
		}
		sent++
	}
	return sent
}
