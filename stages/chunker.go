package stages

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// ChunkerKind is the bite chunker's kind name.
const ChunkerKind = "bite-chunker"

// ChunkerSettings control where bites are cut. Each field's doc tag is its
// documentation, the comment router -print-pipeline writes above it.
type ChunkerSettings struct {
	Format        string            `yaml:"format" doc:"bite encoding: \"ogg-opus\", a complete Ogg Opus stream per bite, or \"rtp\", the original router's one raw RTP packet per bite"`
	ThresholdDBov int               `yaml:"threshold_dbov" doc:"packets quieter than this RFC 6464 audio level (dBov, -127 to 0) are silence"`
	Silence       pipeline.Duration `yaml:"silence" doc:"this much silence, or a gap in the RTP timestamps (DTX) this long, ends a bite"`
	Preroll       pipeline.Duration `yaml:"preroll" doc:"audio kept before speech starts and after it ends"`
	MaxDuration   pipeline.Duration `yaml:"max_duration" doc:"longest bite, in RTP time: a longer utterance is cut into several bites"`
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

// Bounds on what one publisher's track can make the chunker do. RTP
// timestamps and TOC bytes come from the publisher; arrival times come from
// the router's clock, so every bound is on arrival time.
const (
	// biteJitter is how much more audio a bite may claim than the arrival
	// time its packets span: the delay of its first packet over its last
	// (network jitter, a burst after a stall, the last packet's own length).
	biteJitter = 200 * time.Millisecond
	// resyncWindow: a bite whose RTP time runs this far ahead of its
	// arrival span, or a timestamp this far behind the last one, is a
	// timestamp jump: the bite ends and the chunker starts afresh. Within
	// it, an older timestamp is a late or retransmitted packet (NACK
	// retransmissions arrive within a round trip) and is skipped.
	resyncWindow = time.Second
	// maxPacketRate, with packetBurst, bounds the packets per track the
	// chunker takes. WebRTC negotiates Opus with minptime=10, so real
	// clients send at most 100 packets/s (50 at the usual 20 ms); 200/s is
	// twice that. The burst of 100 packets lets through 2 s of 20 ms audio
	// a stalled network delivers at once.
	maxPacketRate = 200
	packetBurst   = 100
	// maxBiteRate, with biteBurst, bounds the bites per track. A real
	// client's bite ends with 500 ms of silence (or a DTX gap as long), or
	// at max_duration, so it makes at most 2 bites/s; moves between
	// conversations are rare. Bites beyond the bound are dropped.
	maxBiteRate = 4
	biteBurst   = 8
)

// Rate-limiter intervals and tolerances, in nanoseconds of arrival time.
const (
	packetInterval = int64(time.Second / maxPacketRate)
	packetTau      = (packetBurst - 1) * packetInterval
	biteInterval   = int64(time.Second / maxBiteRate)
	biteTau        = (biteBurst - 1) * biteInterval
)

// gcra is a rate limiter (the generic cell rate algorithm) on arrival time
// in nanoseconds: it admits burst events at once and one every interval
// after, so at most burst + span/interval over any span.
type gcra struct{ tat int64 } // theoretical arrival time of the next event

// allow reports whether an event at now conforms, and accounts it if so.
func (g *gcra) allow(now, interval, tau int64) bool {
	t := max(g.tat, now)
	if t-now > tau {
		return false
	}
	g.tat = t + interval
	return true
}

// rtpNanos converts RTP samples at 48 kHz to nanoseconds.
func rtpNanos(samples int64) int64 { return samples * int64(time.Second) / opusRate }

// Chunker is the bite-chunker stage.
type Chunker struct {
	s       ChunkerSettings
	log     *slog.Logger
	silence uint32 // in RTP samples
	preroll uint32
	max     uint32

	bites     atomic.Uint64
	muxFail   atomic.Uint64
	jumps     atomic.Uint64
	dropRate  atomic.Uint64
	dropBites atomic.Uint64
	clamped   atomic.Uint64
}

// Stats reports bites emitted, bites lost to a muxing error, RTP timestamp
// jumps resynchronised, packets over the per-track rate (dropped), bites
// over the per-track bite rate (dropped) and bites whose duration was
// clamped to their arrival span.
func (c *Chunker) Stats() map[string]uint64 {
	return map[string]uint64{
		"bites":            c.bites.Load(),
		"drop_mux_error":   c.muxFail.Load(),
		"timestamp_jumps":  c.jumps.Load(),
		"drop_rate":        c.dropRate.Load(),
		"drop_bite_rate":   c.dropBites.Load(),
		"duration_clamped": c.clamped.Load(),
	}
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
	return &chunkerProc{c: c, track: t, emit: emit, last: math.MinInt64, lastRTP: math.MinInt64,
		pktRate: gcra{math.MinInt64}, biteRate: gcra{math.MinInt64}}, nil
}

// Close does nothing: each track's processor flushes its own bite.
func (c *Chunker) Close(context.Context) error { return nil }

// held is one packet kept for the bite being collected.
type held struct {
	ts       uint32
	dur      uint32
	arrival  time.Time // arrival, made monotonic (see clock)
	at       int64     // arrival in nanoseconds
	off, end int       // payload in arena
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

	last     int64     // latest arrival, ns (monotonic: see clock)
	lastTime time.Time // the same as a time.Time
	lastRTP  int64     // end of the audio claimed so far, ns ("rtp" format)
	pktRate  gcra      // packets taken
	biteRate gcra      // bites emitted
}

// clock returns p's arrival in nanoseconds, never before an earlier
// packet's: a small step back (timestamps of different sockets) is
// taken as no step. A step back of more than a second is the router's
// clock being set: the bite in progress ends and the limiters start over.
func (cp *chunkerProc) clock(p *pipeline.Packet) int64 {
	now := p.Arrival.UnixNano()
	if now < cp.last {
		if cp.last-now <= int64(time.Second) {
			return cp.last
		}
		cp.flush()
		cp.pktRate, cp.biteRate, cp.lastRTP = gcra{math.MinInt64}, gcra{math.MinInt64}, math.MinInt64
	}
	cp.last, cp.lastTime = now, p.Arrival
	return now
}

func (cp *chunkerProc) HandlePacket(p *pipeline.Packet) bool {
	now := cp.clock(p)
	if !cp.pktRate.allow(now, packetInterval, packetTau) {
		cp.c.dropRate.Add(1)
		return true
	}
	c := p.Conversation
	if cp.c.s.Format == pipeline.FormatRTP {
		if c != nil {
			cp.emitRTP(p, now)
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
	dur, err := oggopus.PacketDuration(p.RTP.Payload)
	if err != nil {
		return true
	}
	if n := len(cp.pkts); n > 0 {
		last, first := cp.pkts[n-1], cp.pkts[0]
		step := int64(int32(ts - last.ts))
		switch {
		case step <= 0 && rtpNanos(-step) <= int64(resyncWindow):
			return true // late or duplicate (a retransmission): already past it
		case step <= 0,
			rtpNanos(int64(ts-first.ts)) > now-first.at+int64(resyncWindow):
			// The timestamps went back, or ran ahead of arrival time:
			// end the bite before the jump and start afresh.
			cp.c.jumps.Add(1)
			cp.flush()
		case step > int64(last.dur) && uint32(step)-last.dur >= cp.c.silence:
			cp.flush() // a DTX gap as long as a silence
		}
	}
	cp.hold(p, uint32(dur), now)
	loud := p.Loud(cp.c.s.ThresholdDBov)
	if !cp.open {
		if !loud {
			cp.trimFront(ts+uint32(dur)-cp.c.preroll, len(cp.pkts)-int(cp.preKeep()))
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
	case end-cp.pkts[0].ts >= cp.c.max,
		now-cp.pkts[0].at >= int64(cp.c.s.MaxDuration.D()+biteJitter):
		cp.flush() // max_duration of RTP time, or of arrival time
	}
	return true
}

// preKeep is how many packets the pre-roll may hold: one per 2.5 ms (the
// shortest Opus frame), so that timestamps that barely advance cannot make
// the pre-roll grow without end.
func (cp *chunkerProc) preKeep() uint32 { return cp.c.preroll/120 + 1 }

func (cp *chunkerProc) HandleBite(*pipeline.Bite) {}

// Close emits the bite in progress: the track ended.
func (cp *chunkerProc) Close() { cp.flush() }

// hold appends p to the held packets.
func (cp *chunkerProc) hold(p *pipeline.Packet, dur uint32, now int64) {
	off := len(cp.arena)
	cp.arena = append(cp.arena, p.RTP.Payload...)
	cp.pkts = append(cp.pkts, held{ts: p.RTP.Timestamp, dur: dur, arrival: cp.lastTime, at: now, off: off, end: len(cp.arena)})
}

// trimFront drops held packets that start before ts, and the first drop
// packets whatever their timestamps (pre-roll upkeep).
func (cp *chunkerProc) trimFront(ts uint32, drop int) {
	i := 0
	for i < len(cp.pkts) && (i < drop || int32(cp.pkts[i].ts-ts) < 0) {
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
	if !cp.biteRate.allow(cp.last, biteInterval, biteTau) {
		cp.c.dropBites.Add(1)
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
	// The bite claims no more audio than the arrival time it spans allows:
	// neither timestamps nor TOC bytes can make it claim more.
	d := w.Duration()
	if limit := time.Duration(cp.pkts[len(cp.pkts)-1].at-cp.pkts[0].at) + biteJitter; d > limit {
		d = limit
		cp.c.clamped.Add(1)
	}
	cp.emitBite(cp.pkts[0].arrival, d, pipeline.FormatOggOpus, buf.Bytes())
}

// emitRTP emits one packet as a bite, as the original router did.
// Its duration comes from the TOC byte, but the audio the track's bites
// claim never runs ahead of arrival time by more than biteJitter.
func (cp *chunkerProc) emitRTP(p *pipeline.Packet, now int64) {
	dur, err := oggopus.PacketDuration(p.RTP.Payload)
	if err != nil {
		dur = 0
	}
	d := rtpNanos(int64(dur))
	start := max(cp.lastRTP, now)
	if limit := now + int64(biteJitter) - start; d > limit {
		d = limit
		cp.c.clamped.Add(1)
	}
	cp.lastRTP = start + d
	cp.conv = p.Conversation
	cp.emitBite(p.Arrival, time.Duration(d), pipeline.FormatRTP, bytes.Clone(p.Raw))
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
