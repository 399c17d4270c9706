package cluster

import (
	"encoding/binary"
	"errors"
	"strings"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/rtc/codec"
)

// The relay frame: one RTP packet of a publisher, or the end of its track,
// as one core NATS message, or with others of its subject in a batch
// (below). Fixed header, big endian, then the ids and the packet; no
// protobuf, and neither side allocates per frame.
//
//	0      version: frameVersion (Opus, a Beep user's track),
//	       frameVersionCodec (byte 5 names a codec other than Opus) or
//	       frameVersionParticipant (bytes 6 and 7 are used); routers that
//	       do not know a version drop its frames as unknown rather than
//	       misread them
//	1      kind: kindPacket, kindEnd or kindMessage
//	2      the publisher's audio level extension id (RFC 6464), 0: none
//	3      length of the user id (U)
//	4      length of the client id (C)
//	5      codec (codecOpus, codecVP8, ...): the track's kind and codec
//	6      length of the participant id (P), version 3; else 0
//	7      length of the participant's display name (D), version 3; else 0
//	8..15  track key: names the relayed track on its router
//	16..23 arrival at the publisher's router, unix ns
//	24..31 origin: the publisher's router (a router's own subscriptions
//	       receive its own frames: it skips them)
//	32..   user id, client id, participant id, display name, then
//	       (kindPacket) the RTP packet as received, after SRTP decryption,
//	       header extensions (the audio level) included, or (kindMessage,
//	       version 3 only) a participant's message to the others
//	       (room.Participant.Broadcast: a front-end's chat, say), whose
//	       key and arrival are 0
//
// The ids travel in every frame, so that a router that starts listening
// mid-stream can make the remote track (and its participant) from any
// frame; they cost a few tens of bytes beside the packet. A participant's
// frames (a front-end's, such as a video room's publisher) name it: its
// tracks become one remote participant on the receiving router.
//
// A batch carries several frames of one subject in one NATS message: the
// frames a sender goroutine found queued together when it woke (several
// tracks of a conversation, or a burst of one), so that the wake-ups and
// system calls of a NATS message, and nats.go's allocations on the
// receiving side, are paid once for them all. Frames keep their order in
// it; a lone frame goes out as itself, not as a batch of one.
//
//	0      frameBatch (a router that does not know batches drops them as
//	       an unknown version)
//	1      number of frames (N), at least 1
//	2..    N times: the frame's length (L, 2 bytes, big endian), then
//	       the L bytes of a frame (versions 1 to 3; never a batch)
//
// Nothing follows the last frame. A batch that does not add up (a length
// past its end, bytes left over, no frame) is malformed as a whole; a
// frame in it that does not parse is malformed on its own, and the
// others are handled.
const (
	frameVersion            = 1
	frameVersionCodec       = 2
	frameVersionParticipant = 3
	frameBatch              = 4
	headerLen               = 32
	kindPacket              = 1
	kindEnd                 = 2
	kindMessage             = 3
	// maxID bounds each id a frame carries.
	maxID = 255
)

// Batches.
const (
	batchHeaderLen = 2
	// maxBatch and maxBatchBytes bound a batch the sender makes, well
	// below NATS's max_payload (1 MB by default; the server's own, if
	// lower, bounds it too); a receiver takes up to 255 frames.
	maxBatch      = 32
	maxBatchBytes = 60 << 10
	// maxBatched is the longest frame a batch can carry.
	maxBatched = 1<<16 - 1
)

// Codecs a frame names (byte 5); 0, Opus, is what version 1 frames carry.
const (
	codecOpus byte = iota
	codecVP8
	codecVP9
	codecH264
	numCodecs
)

// codecs are the capabilities of the codec numbers, by number.
var codecs = [numCodecs]webrtc.RTPCodecParameters{codec.Opus, codec.VP8, codec.VP9, codec.H264}

// codecOf returns the number of the codec with MIME type mime (any case),
// and whether it has one.
func codecOf(mime string) (byte, bool) {
	for i, c := range codecs {
		if strings.EqualFold(c.MimeType, mime) {
			return byte(i), true
		}
	}
	return 0, false
}

// kindOf returns the kind of media of codec number c.
func kindOf(c byte) webrtc.RTPCodecType {
	if c == codecOpus {
		return webrtc.RTPCodecTypeAudio
	}
	return webrtc.RTPCodecTypeVideo
}

// Frame errors (static: the receive path allocates nothing, even for bad
// frames).
var (
	errShort    = errors.New("relay frame: short")
	errVersion  = errors.New("relay frame: unknown version")
	errKind     = errors.New("relay frame: unknown kind")
	errCodec    = errors.New("relay frame: unknown codec")
	errNoPacket = errors.New("relay frame: packet missing or not RTP")

	errNoParticipant = errors.New("relay frame: participant id missing")
	errBatch         = errors.New("relay batch: malformed")
)

// frame is a parsed relay frame; its slices alias the message.
type frame struct {
	kind    byte
	codec   byte
	ext     uint8
	key     uint64
	origin  uint64
	arrival int64
	user    []byte
	client  []byte
	part    []byte // the participant id; empty for a Beep user's track
	display []byte // the participant's display name
	raw     []byte // kindPacket: the RTP packet; kindMessage: the message
}

// publisher names a relayed track's publisher in its frames: a Beep
// user's device, or a participant (part set). Each id is at most maxID
// bytes.
type publisher struct {
	user, client  string
	part, display string
}

// appendFrame appends a frame to dst; cn is one of the codec numbers.
func appendFrame(dst []byte, kind, cn, ext byte, origin, key uint64, arrival int64, p *publisher, raw []byte) []byte {
	var h [headerLen]byte
	h[0], h[1], h[2], h[3], h[4] = frameVersion, kind, ext, byte(len(p.user)), byte(len(p.client))
	switch {
	case p.part != "":
		h[0], h[5], h[6], h[7] = frameVersionParticipant, cn, byte(len(p.part)), byte(len(p.display))
	case cn != codecOpus:
		h[0], h[5] = frameVersionCodec, cn
	}
	binary.BigEndian.PutUint64(h[8:16], key)
	binary.BigEndian.PutUint64(h[16:24], uint64(arrival))
	binary.BigEndian.PutUint64(h[24:32], origin)
	dst = append(dst, h[:]...)
	dst = append(dst, p.user...)
	dst = append(dst, p.client...)
	if p.part != "" {
		dst = append(dst, p.part...)
		dst = append(dst, p.display...)
	}
	return append(dst, raw...)
}

// parseFrame parses b without copying.
func parseFrame(b []byte) (frame, error) {
	if len(b) < headerLen {
		return frame{}, errShort
	}
	if b[0] != frameVersion && b[0] != frameVersionCodec && b[0] != frameVersionParticipant {
		return frame{}, errVersion
	}
	f := frame{
		kind:    b[1],
		codec:   b[5],
		ext:     b[2],
		key:     binary.BigEndian.Uint64(b[8:16]),
		arrival: int64(binary.BigEndian.Uint64(b[16:24])),
		origin:  binary.BigEndian.Uint64(b[24:32]),
	}
	var p, d int
	switch b[0] {
	case frameVersion:
		f.codec = codecOpus // its byte 5 was reserved
	case frameVersionCodec:
		if f.codec == codecOpus || f.codec >= numCodecs {
			return frame{}, errCodec
		}
	case frameVersionParticipant:
		if f.codec >= numCodecs {
			return frame{}, errCodec
		}
		if p, d = int(b[6]), int(b[7]); p == 0 {
			return frame{}, errNoParticipant
		}
	}
	u, c := int(b[3]), int(b[4])
	ids := headerLen + u + c + p + d
	if len(b) < ids {
		return frame{}, errShort
	}
	at := headerLen
	f.user, at = b[at:at+u], at+u
	f.client, at = b[at:at+c], at+c
	f.part, at = b[at:at+p], at+p
	f.display = b[at : at+d]
	f.raw = b[ids:]
	switch f.kind {
	case kindPacket:
		if len(f.raw) < 12 || f.raw[0]>>6 != 2 || u == 0 {
			return frame{}, errNoPacket
		}
	case kindEnd:
	case kindMessage:
		if p == 0 {
			return frame{}, errNoParticipant
		}
	default:
		return frame{}, errKind
	}
	return f, nil
}

// startBatch starts a batch in dst[:0]; appendBatched adds frames to it.
func startBatch(dst []byte) []byte { return append(dst[:0], frameBatch, 0) }

// appendBatched appends frame f (at most maxBatched bytes) to batch b, of
// fewer than 255 frames.
func appendBatched(b, f []byte) []byte {
	b[1]++
	b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
	return append(b, f...)
}

// batchReader returns the frames of a batch in order; its slices alias
// the message.
type batchReader struct {
	rest []byte
}

// readBatch checks that b is a batch whose lengths add up, and returns a
// reader of its frames.
func readBatch(b []byte) (batchReader, error) {
	if len(b) < batchHeaderLen || b[0] != frameBatch || b[1] == 0 {
		return batchReader{}, errBatch
	}
	rest := b[batchHeaderLen:]
	for range int(b[1]) {
		if len(rest) < 2 {
			return batchReader{}, errBatch
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l {
			return batchReader{}, errBatch
		}
		rest = rest[2+l:]
	}
	if len(rest) != 0 {
		return batchReader{}, errBatch
	}
	return batchReader{rest: b[batchHeaderLen:]}, nil
}

// next returns the next frame of the batch, and false after the last.
func (r *batchReader) next() ([]byte, bool) {
	if len(r.rest) < 2 {
		return nil, false
	}
	l := int(binary.BigEndian.Uint16(r.rest))
	f := r.rest[2 : 2+l]
	r.rest = r.rest[2+l:]
	return f, true
}

// token escapes id into one NATS subject token or JetStream key token:
// ASCII letters, digits, '-' and '_' stay, every other byte becomes =XX
// ('=' included, so the mapping is injective); "" becomes "=".
func token(id string) string {
	if id == "" {
		return "="
	}
	clean := true
	for i := 0; i < len(id) && clean; i++ {
		clean = safe(id[i])
	}
	if clean {
		return id
	}
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(id) * 3)
	for i := 0; i < len(id); i++ {
		c := id[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	return b.String()
}

func safe(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

// untoken reverses token; ok is false for a string token never returns.
func untoken(s string) (string, bool) {
	if s == "" {
		return "", false
	}
	if s == "=" {
		return "", true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '=' {
			if !safe(c) {
				return "", false
			}
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, lo := unhex(s[i+1]), unhex(s[i+2])
		if hi < 0 || lo < 0 {
			return "", false
		}
		b.WriteByte(byte(hi<<4 | lo))
		i += 2
	}
	return b.String(), true
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
