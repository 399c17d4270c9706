package session

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"
)

// Slot is one outgoing audio stream of a receiving device: one receiving
// audio m-line of its offer. The conversation assigns it a speaker; the Slot
// turns whatever speakers it carries into one valid, continuous RTP stream:
// its own SSRC and payload type, sequence numbers and timestamps that run on
// across speaker switches, and only the header extensions the receiver
// negotiated (a stray mid extension makes browsers drop packets).
//
// Slot implements webrtc.TrackLocal. pion's TrackLocalStaticRTP cannot be
// used: it passes sequence numbers and timestamps through unchanged.
type Slot struct {
	peer     *Peer
	id       string
	streamID string

	// source is the track the slot carries now (Conversation.mu writes).
	source atomic.Pointer[Track]

	mu      sync.Mutex
	writer  webrtc.TrackLocalWriter // nil until bound
	ssrc    uint32
	pt      uint8
	levelID uint8 // receiver's audio level extension id; 0: not negotiated

	last      *Track // source of the last packet written
	started   bool
	seqOffset uint16
	tsOffset  uint32
	lastSeq   uint16
	lastTS    uint32
	lastAt    int64 // unix ns of the last write

	hdr   rtp.Header
	ext   [1]rtp.Extension
	level [1]byte

	written atomic.Uint64
	bytes   atomic.Uint64
}

func newSlot(p *Peer, index int) *Slot {
	return &Slot{
		peer:     p,
		id:       "slot" + strconv.Itoa(index),
		streamID: "beep-" + p.Claim.ClientID,
	}
}

// ID is the track id (unique within the peer connection).
func (s *Slot) ID() string { return s.id }

// RID is empty: slots have no simulcast layers.
func (s *Slot) RID() string { return "" }

// StreamID is the media stream id the receiver sees.
func (s *Slot) StreamID() string { return s.streamID }

// Kind is audio.
func (s *Slot) Kind() webrtc.RTPCodecType { return webrtc.RTPCodecTypeAudio }

// errNoOpus is returned by Bind when the receiver did not accept Opus.
var errNoOpus = errors.New("receiver did not negotiate opus")

// Bind is called by pion when the sender starts.
func (s *Slot) Bind(ctx webrtc.TrackLocalContext) (webrtc.RTPCodecParameters, error) {
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
func (s *Slot) Unbind(webrtc.TrackLocalContext) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writer = nil
	return nil
}

// setSource assigns the slot a speaker (nil: none). Callers hold the
// conversation's lock.
func (s *Slot) setSource(t *Track) { s.source.Store(t) }

// Write forwards one packet of src, received for conversation c, at now
// (unix ns). levelByte is the RFC 6464 byte to send when hasLevel. A packet
// from a track that is no longer the slot's source, or for a conversation
// the receiving user has left, is dropped: it reports false.
func (s *Slot) Write(src *Track, c *Conversation, p *rtp.Packet, levelByte byte, hasLevel bool, now int64) (bool, error) {
	if s.source.Load() != src || s.peer.user.conv.Load() != c {
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
			elapsed := uint32((now - s.lastAt) * 48 / 1e6)
			if elapsed < 960 {
				elapsed = 960
			}
			s.seqOffset = s.lastSeq + 1 - p.SequenceNumber
			s.tsOffset = s.lastTS + elapsed - p.Timestamp
		}
		s.last = src
		marker = true
	}
	seq := p.SequenceNumber + s.seqOffset
	ts := p.Timestamp + s.tsOffset
	if !s.started || int16(seq-s.lastSeq) > 0 {
		s.lastSeq, s.lastTS = seq, ts
	}
	s.started = true
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
	if _, err := s.writer.WriteRTP(h, p.Payload); err != nil {
		if errors.Is(err, io.ErrClosedPipe) {
			return false, nil
		}
		return false, err
	}
	s.written.Add(1)
	s.bytes.Add(uint64(len(p.Payload)))
	return true, nil
}
