package stages

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// ChunkerKind is the bite chunker's kind name.
const ChunkerKind = "bite-chunker"

// ChunkerSettings control where bites are cut.
type ChunkerSettings struct {
	// Format is the bite encoding: "ogg-opus" (a complete Ogg Opus stream
	// per bite) or "rtp" (the original router's one raw RTP packet per bite).
	Format string `yaml:"format"`
	// ThresholdDBov: packets quieter than this (RFC 6464 level) are silence.
	ThresholdDBov int `yaml:"threshold_dbov"`
	// Silence is how long a silence must last to end a bite. A gap in the
	// RTP timestamps (DTX) of this length ends a bite too.
	Silence pipeline.Duration `yaml:"silence"`
	// Preroll is the audio kept before speech starts, and after it ends.
	Preroll pipeline.Duration `yaml:"preroll"`
	// MaxDuration ends a bite that grows this long, measured on RTP time.
	MaxDuration pipeline.Duration `yaml:"max_duration"`
}

var chunkerKind = pipeline.Define(ChunkerKind,
	"cuts each publisher's speech into self-contained bites",
	ChunkerSettings{
		Format:        pipeline.FormatOggOpus,
		ThresholdDBov: -50,
		Silence:       pipeline.Duration(500 * time.Millisecond),
		Preroll:       pipeline.Duration(100 * time.Millisecond),
		MaxDuration:   pipeline.Duration(5 * time.Second),
	},
	func(env pipeline.Env, name string, s *ChunkerSettings) (pipeline.Stage, error) {
		return NewChunker(*s, env.Logger)
	})

// opusRate is the RTP clock of Opus.
const opusRate = 48000

// samples converts a duration to 48 kHz RTP timestamp units.
func samples(d pipeline.Duration) uint32 { return uint32(d.D() * opusRate / time.Second) }

// Chunker is the bite-chunker stage.
type Chunker struct {
	s       ChunkerSettings
	log     *slog.Logger
	silence uint32 // in RTP samples
	preroll uint32
	max     uint32

	bites   atomic.Uint64
	muxFail atomic.Uint64
}

// Stats reports bites emitted and bites lost to a muxing error.
func (c *Chunker) Stats() map[string]uint64 {
	return map[string]uint64{"bites": c.bites.Load(), "drop_mux_error": c.muxFail.Load()}
}

// NewChunker validates s and returns a Chunker.
func NewChunker(s ChunkerSettings, log *slog.Logger) (*Chunker, error) {
	switch {
	case s.Format != pipeline.FormatOggOpus && s.Format != pipeline.FormatRTP:
		return nil, fmt.Errorf("format %q: want %q or %q", s.Format, pipeline.FormatOggOpus, pipeline.FormatRTP)
	case s.ThresholdDBov > 0 || s.ThresholdDBov < -127:
		return nil, errors.New("threshold_dbov must be between -127 and 0")
	case s.Silence <= 0 || s.MaxDuration <= 0:
		return nil, errors.New("silence and max_duration must be positive")
	case s.MaxDuration.D() > 10*time.Minute:
		return nil, errors.New("max_duration must be at most 10m")
	case s.Preroll.D() > time.Second:
		return nil, errors.New("preroll must be at most 1s")
	}
	if log == nil {
		log = slog.Default()
	}
	return &Chunker{s: s, log: log, silence: samples(s.Silence), preroll: samples(s.Preroll), max: samples(s.MaxDuration)}, nil
}

// Open returns the chunker's processor for one track. Bites are Opus: a
// video track passes by untouched.
func (c *Chunker) Open(t *room.Track, emit pipeline.Emit) (pipeline.Processor, error) {
	if t.Kind != webrtc.RTPCodecTypeAudio {
		return pipeline.Nop{}, nil
	}
	return &chunkerProc{c: c, track: t, emit: emit}, nil
}

// Close does nothing: each track's processor flushes its own bite.
func (c *Chunker) Close(context.Context) error { return nil }

// held is one packet kept for the bite being collected.
type held struct {
	ts       uint32
	dur      uint32
	arrival  time.Time
	off, end int // payload in arena
}

// chunkerProc collects one track's packets. Its buffers grow to the largest
// bite and are reused, so the steady state allocates only when a bite is
// emitted.
type chunkerProc struct {
	c     *Chunker
	track *room.Track
	emit  pipeline.Emit

	conv    *room.Conversation // conversation of the held packets
	open    bool               // speech started: the held packets are a bite
	pkts    []held
	arena   []byte
	silent  bool   // in a run of quiet packets
	quietAt uint32 // timestamp where the quiet run began
	seq     uint64
}

func (cp *chunkerProc) HandlePacket(p *pipeline.Packet) bool {
	c := p.Conversation
	if cp.c.s.Format == pipeline.FormatRTP {
		if c != nil {
			cp.emitRTP(p)
		}
		return true
	}
	if c != cp.conv {
		cp.flush() // moved, or left: a bite belongs to one conversation
		cp.conv = c
	}
	if c == nil || len(p.RTP.Payload) == 0 {
		return true
	}
	ts := p.RTP.Timestamp
	if n := len(cp.pkts); n > 0 {
		last := cp.pkts[n-1]
		if int32(ts-last.ts) <= 0 {
			return true // late or duplicate (a retransmission): already past it
		}
		if ts-(last.ts+last.dur) >= cp.c.silence {
			cp.flush() // a DTX gap as long as a silence
		}
	}
	dur, err := oggopus.PacketDuration(p.RTP.Payload)
	if err != nil {
		return true
	}
	cp.hold(p, uint32(dur))
	loud := p.Loud(cp.c.s.ThresholdDBov)
	if !cp.open {
		if !loud {
			cp.trimFront(ts + uint32(dur) - cp.c.preroll)
			return true
		}
		cp.open = true
		cp.silent = false
	}
	switch {
	case loud:
		cp.silent = false
	case !cp.silent:
		cp.silent, cp.quietAt = true, ts
	}
	end := ts + uint32(dur)
	switch {
	case cp.silent && end-cp.quietAt >= cp.c.silence:
		cp.trimBack(cp.quietAt + cp.c.preroll)
		cp.flush()
	case end-cp.pkts[0].ts >= cp.c.max:
		cp.flush()
	}
	return true
}

func (cp *chunkerProc) HandleBite(*pipeline.Bite) {}

// Close emits the bite in progress: the track ended.
func (cp *chunkerProc) Close() { cp.flush() }

// hold appends p to the held packets.
func (cp *chunkerProc) hold(p *pipeline.Packet, dur uint32) {
	off := len(cp.arena)
	cp.arena = append(cp.arena, p.RTP.Payload...)
	cp.pkts = append(cp.pkts, held{ts: p.RTP.Timestamp, dur: dur, arrival: p.Arrival, off: off, end: len(cp.arena)})
}

// trimFront drops held packets that start before ts (pre-roll upkeep).
func (cp *chunkerProc) trimFront(ts uint32) {
	i := 0
	for i < len(cp.pkts) && int32(cp.pkts[i].ts-ts) < 0 {
		i++
	}
	if i == 0 {
		return
	}
	cut := cp.pkts[i-1].end
	n := copy(cp.arena, cp.arena[cut:])
	cp.arena = cp.arena[:n]
	m := copy(cp.pkts, cp.pkts[i:])
	cp.pkts = cp.pkts[:m]
	for j := range cp.pkts {
		cp.pkts[j].off -= cut
		cp.pkts[j].end -= cut
	}
}

// trimBack drops held packets that start at or after ts (trailing silence).
func (cp *chunkerProc) trimBack(ts uint32) {
	for len(cp.pkts) > 1 && int32(cp.pkts[len(cp.pkts)-1].ts-ts) >= 0 {
		cp.pkts = cp.pkts[:len(cp.pkts)-1]
	}
}

// flush emits the held packets as a bite if speech was detected, and
// starts over.
func (cp *chunkerProc) flush() {
	defer func() {
		cp.pkts, cp.arena, cp.open, cp.silent = cp.pkts[:0], cp.arena[:0], false, false
	}()
	if !cp.open || len(cp.pkts) == 0 || cp.conv == nil {
		return
	}
	var buf bytes.Buffer
	w, err := oggopus.NewWriter(&buf, oggopus.Config{})
	if err == nil {
		for _, h := range cp.pkts {
			if err = w.WriteRTP(cp.arena[h.off:h.end], h.ts); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		cp.c.muxFail.Add(1)
		cp.c.log.Warn("bite dropped: ogg mux failed", "track", cp.track.ID, "err", err)
		return
	}
	cp.emitBite(cp.pkts[0].arrival, w.Duration(), pipeline.FormatOggOpus, buf.Bytes())
}

// emitRTP emits one packet as a bite, as the original router did.
func (cp *chunkerProc) emitRTP(p *pipeline.Packet) {
	dur, err := oggopus.PacketDuration(p.RTP.Payload)
	if err != nil {
		dur = 0
	}
	cp.conv = p.Conversation
	cp.emitBite(p.Arrival, time.Duration(dur)*time.Second/opusRate, pipeline.FormatRTP, bytes.Clone(p.Raw))
}

func (cp *chunkerProc) emitBite(start time.Time, d time.Duration, format string, data []byte) {
	cl := cp.track.Claim()
	b := &pipeline.Bite{
		Conversation: cp.conv.ID,
		UserID:       cl.UserID,
		ClientID:     cl.ClientID,
		TrackID:      cp.track.ID,
		Seq:          cp.seq,
		Start:        start,
		Duration:     d,
		Format:       format,
		Data:         data,
	}
	cp.seq++
	cp.c.bites.Add(1)
	cp.emit(b)
}
