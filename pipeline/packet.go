package pipeline

import (
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/room"
)

// Packet is one RTP packet of a published track on its way through a Chain.
// A Chain reuses one Packet for all packets of its track: processors must not
// keep it, or slices of it, after HandlePacket returns.
type Packet struct {
	// RTP is the parsed packet; its Payload aliases Raw.
	RTP rtp.Packet
	// Raw is the packet as received (after SRTP decryption).
	Raw []byte
	// Arrival is when the packet reached the router: the kernel's receive
	// time of its datagram where the system gives it, else when the
	// router read it.
	Arrival time.Time
	// Track is the published track the packet belongs to; its Kind and
	// Codec say what the packet carries (audio or video, and the codec).
	// Stages that only understand Opus skip the others.
	Track *room.Track
	// Conversation is the conversation the packet is for. The permission gate
	// sets it from the publisher's membership when the packet arrives; it is
	// nil before the gate and for publishers who belong to no conversation.
	Conversation *room.Conversation
	// Level is the RFC 6464 audio level in -dBov (0 is loudest, 127 silence);
	// meaningful only when HasLevel is true.
	Level uint8
	// Voice is the RFC 6464 V bit (the sender's own voice activity guess).
	Voice bool
	// HasLevel reports whether the packet carried the audio level extension.
	HasLevel bool
}

// LevelByte returns the RFC 6464 extension byte (V bit and level).
func (p *Packet) LevelByte() byte {
	b := p.Level & 0x7f
	if p.Voice {
		b |= 0x80
	}
	return b
}

// Loud reports whether the packet is at least as loud as threshold dBov
// (a negative number such as -50). Packets without a level count as loud:
// a missing extension says nothing about silence.
func (p *Packet) Loud(thresholdDBov int) bool {
	return !p.HasLevel || -int(p.Level) >= thresholdDBov
}

// Bite is a self-contained chunk of one publisher's speech in one
// conversation. Stages that emit a Bite hand it over: it is immutable from
// then on and shared, read-only, by every later stage.
type Bite struct {
	// Conversation is the conversation id (the original schema's key).
	Conversation string
	// UserID and ClientID identify the publisher.
	UserID, ClientID string
	// TrackID identifies the published track within the publisher's peer.
	TrackID string
	// Seq numbers the bites of one track from 0.
	Seq uint64
	// Start is the arrival time of the bite's first packet.
	Start time.Time
	// Duration is the audio the bite holds.
	Duration time.Duration
	// Format names the encoding of Data: FormatOggOpus or FormatRTP.
	Format string
	// Data is the bite's payload.
	Data []byte
}

// Bite formats.
const (
	// FormatOggOpus is a complete Ogg Opus stream (RFC 7845).
	FormatOggOpus = "ogg-opus"
	// FormatRTP is one raw RTP packet, as the original Beep router published.
	FormatRTP = "rtp"
)
