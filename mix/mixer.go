package mix

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beepvoice/router/oggopus"
	"github.com/thesyncim/gopus"
)

// FrameDuration is the length of one mixed frame.
const FrameDuration = 20 * time.Millisecond

// Defaults of Config.
const (
	DefaultJitter       = 40 * time.Millisecond
	DefaultHangover     = 200 * time.Millisecond
	DefaultBitrate      = 32000
	DefaultComplexity   = 5
	DefaultExpectedLoss = 10
	DefaultQueueSize    = 128
	DefaultMaxSpeakers  = 8
)

const (
	// ringFrames is the jitter buffer's length per speaker (320 ms), the
	// most a packet may arrive ahead of its turn.
	ringFrames = 16
	// maxJitter bounds Config.Jitter so that the ring holds it.
	maxJitter = 200 * time.Millisecond
	// maxConceal is how many missing frames in a row are concealed (PLC
	// or FEC); after that a speaker contributes silence until it sends
	// again or its hangover ends.
	maxConceal = 5
	// lateResync is how many late packets in a row re-anchor a speaker.
	lateResync = 3
	// maxCatchUp is how many overdue frames one tick mixes at most; older
	// frames are skipped (counted) rather than delivered late.
	maxCatchUp = 5
)

// Errors of Push.
var (
	ErrQueueFull   = errors.New("mix: queue full, packet dropped")
	ErrNoSpeaker   = errors.New("mix: packet without a speaker")
	ErrPacketSize  = errors.New("mix: empty or oversized opus payload")
	ErrFrameLength = errors.New("mix: opus packet is not one 20 ms frame")
)

// Config configures a Mixer. Zero values take the defaults.
type Config struct {
	// Jitter is how long after its arrival a speaker's first packet is
	// played (the jitter buffer's depth), 20 ms to 200 ms; default 40 ms.
	Jitter time.Duration
	// Hangover is how long a speaker may send nothing before it leaves
	// the mix (and its mix-minus ends); default 200 ms.
	Hangover time.Duration
	// Bitrate of each encoded mix in bits per second; default 32000.
	Bitrate int
	// Complexity of the Opus encoder, 0..10; default 5 (see
	// docs/performance.md for the CPU of each).
	Complexity int
	// ExpectedLoss in percent tunes the in-band FEC; default 10.
	ExpectedLoss int
	// QueueSize is the number of packets Push can queue between two
	// frames; default 128.
	QueueSize int
	// MaxSpeakers bounds the speakers mixed at once; packets of further
	// speakers are dropped and counted. Default 8.
	MaxSpeakers int
	// Start is the origin of the mixer's clock: frame n covers
	// [Start+n·20ms, Start+(n+1)·20ms) and carries RTP timestamp n·960.
	// Default: the time New is called.
	Start time.Time
	// Ticks drives the mixer: each value received mixes every frame that
	// has ended by then. Default: a 20 ms time.Ticker started by Run.
	// Tests send the times they want.
	Ticks <-chan time.Time
	// Output receives each encoded frame, on the mixer's goroutine. It
	// must not block for long, nor keep f.Payload after it returns.
	// Required.
	Output func(f Frame)
}

// Frame is one 20 ms frame of one distinct mix.
type Frame struct {
	// Minus is the speaker this mix leaves out, or "" for the shared mix
	// of every speaker (for the listeners who are not speaking). It is ""
	// for the mixes of SetMixes.
	Minus string
	// Key identifies the mix: its Mix.Key once SetMixes was called, else
	// Minus.
	Key string
	// Timestamp is the frame's RTP timestamp on the mixer's clock (48 kHz,
	// starting at 0 at Config.Start).
	Timestamp uint32
	// Payload is the Opus packet, valid only during the Output call.
	Payload []byte
	// Level is the mix's RFC 6464 audio level (-dBov, 127 is silence).
	Level uint8
	// Voices is the number of speakers heard in this mix.
	Voices int
	// Arrival is when the earliest of the packets decoded into this
	// frame arrived (Push's arrival), zero when every voice was concealed
	// or silent: the frame's latency is the time from then to its send.
	Arrival time.Time
}

// Stats counts what a Mixer did. Every field only grows.
type Stats struct {
	Received       uint64 // packets accepted by Push
	QueueDrops     uint64 // packets dropped by Push on a full queue
	SpeakerDrops   uint64 // packets of speakers beyond MaxSpeakers
	LateDrops      uint64 // packets that arrived after their frame was mixed
	DuplicateDrops uint64 // packets whose frame was already buffered
	Resyncs        uint64 // speakers re-anchored (late or far early packets)
	Decoded        uint64 // speaker frames decoded from their packet
	Recovered      uint64 // speaker frames recovered from the next packet's FEC
	Concealed      uint64 // speaker frames concealed by PLC
	DecodeErrors   uint64 // packets the decoder refused (concealed instead)
	Frames         uint64 // frames mixed
	Encoded        uint64 // packets encoded (one per distinct mix per frame)
	EncodeErrors   uint64 // frames of a mix the encoder refused (not sent)
	SkippedFrames  uint64 // frames not mixed because the mixer fell behind
	Joins          uint64 // speakers that entered the mix
	Leaves         uint64 // speakers that left it after their hangover
}

// Mixer mixes the speakers of one conversation; see the package doc.
// Push is safe for concurrent use; Run runs the mixer.
type Mixer struct {
	cfg       Config
	jitFrames int64
	hangover  int

	mu    sync.Mutex
	queue []queued // ring of QueueSize
	head  int      // next slot to read
	count int

	running atomic.Bool
	stats   counters

	// pending is the mix set of the last SetMixes, applied at the next
	// tick; guarded by mu.
	pending    []Mix
	hasPending bool

	// Owned by Run's goroutine.
	next     int64 // next frame to mix
	speakers []*speaker
	spare    []*speaker // left speakers, kept for reuse (no allocation)
	shared   mixOut
	sum      [FrameSamples]float64
	acc      [FrameSamples]float64
	pcm      [FrameSamples]float32
	// custom is set once SetMixes was applied: then exactly mixes are
	// encoded (not the shared mix and the mix-minus of each speaker).
	custom    bool
	mixes     []*setMix
	spareOuts []*mixOut // encoders of mixes no longer set, for reuse
}

// Mix is one distinct mix for SetMixes: the sum of every speaker except
// those of Without.
type Mix struct {
	// Key identifies the mix in Frame.Key; unique in one SetMixes call. A
	// mix keeps its encoder (its stream stays continuous) while its key
	// stays in the set.
	Key string
	// Without are the speakers the mix leaves out (Push's speaker ids;
	// ids of speakers not mixing are ignored).
	Without []string
}

// setMix is a mix of SetMixes with its encoder.
type setMix struct {
	Mix
	out *mixOut
}

// queued is a packet waiting in the queue.
type queued struct {
	speaker string
	ts      uint32
	arrival time.Duration // since Config.Start
	n       int
	data    [maxPacket]byte
}

// mixOut is one distinct mix's encoder state.
type mixOut struct {
	enc *gopus.Encoder
	lim limiter
	buf [maxPacket]byte
}

type counters struct {
	received, queueDrops, speakerDrops, lateDrops, duplicateDrops, resyncs     atomic.Uint64
	decoded, recovered, concealed, decodeErrors, frames, encoded, encodeErrors atomic.Uint64
	skipped, joins, leaves                                                     atomic.Uint64
}

// New validates cfg and returns a Mixer; Run starts it.
func New(cfg Config) (*Mixer, error) {
	if cfg.Output == nil {
		return nil, errors.New("mix: Config.Output is required")
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&cfg.Bitrate, DefaultBitrate)
	def(&cfg.Complexity, DefaultComplexity)
	def(&cfg.ExpectedLoss, DefaultExpectedLoss)
	def(&cfg.QueueSize, DefaultQueueSize)
	def(&cfg.MaxSpeakers, DefaultMaxSpeakers)
	if cfg.Jitter == 0 {
		cfg.Jitter = DefaultJitter
	}
	if cfg.Hangover == 0 {
		cfg.Hangover = DefaultHangover
	}
	if cfg.Start.IsZero() {
		cfg.Start = time.Now()
	}
	switch {
	case cfg.Jitter < FrameDuration || cfg.Jitter > maxJitter:
		return nil, fmt.Errorf("mix: jitter %v outside [%v, %v]", cfg.Jitter, FrameDuration, maxJitter)
	case cfg.Hangover < FrameDuration:
		return nil, fmt.Errorf("mix: hangover %v shorter than a frame", cfg.Hangover)
	case cfg.Bitrate < 6000 || cfg.Bitrate > 510000:
		return nil, fmt.Errorf("mix: bitrate %d outside [6000, 510000]", cfg.Bitrate)
	case cfg.Complexity < 0 || cfg.Complexity > 10:
		return nil, fmt.Errorf("mix: complexity %d outside [0, 10]", cfg.Complexity)
	case cfg.ExpectedLoss < 0 || cfg.ExpectedLoss > 100:
		return nil, fmt.Errorf("mix: expected loss %d%% outside [0, 100]", cfg.ExpectedLoss)
	case cfg.QueueSize < 1 || cfg.MaxSpeakers < 1:
		return nil, fmt.Errorf("mix: queue size %d and max speakers %d must be positive", cfg.QueueSize, cfg.MaxSpeakers)
	}
	m := &Mixer{
		cfg:       cfg,
		jitFrames: int64((cfg.Jitter + FrameDuration - 1) / FrameDuration),
		hangover:  int((cfg.Hangover + FrameDuration - 1) / FrameDuration),
		queue:     make([]queued, cfg.QueueSize),
		speakers:  make([]*speaker, 0, cfg.MaxSpeakers),
		spare:     make([]*speaker, 0, cfg.MaxSpeakers),
	}
	enc, err := m.newEncoder()
	if err != nil {
		return nil, err
	}
	m.shared.enc = enc
	return m, nil
}

func (m *Mixer) newEncoder() (*gopus.Encoder, error) {
	e, err := newEncoder(m.cfg.Bitrate, m.cfg.ExpectedLoss)
	if err != nil {
		return nil, err
	}
	if err := e.SetComplexity(m.cfg.Complexity); err != nil {
		return nil, fmt.Errorf("mix: opus complexity %d: %w", m.cfg.Complexity, err)
	}
	return e, nil
}

// Push queues one Opus RTP payload of speaker (a user, whose own voice
// its mix-minus leaves out), with its RTP timestamp and arrival time. The
// payload is copied. It returns ErrQueueFull when the queue is full (the
// packet is dropped and counted), or an error for a packet the mixer
// cannot use: only single 20 ms Opus packets are mixed.
func (m *Mixer) Push(speaker string, timestamp uint32, payload []byte, arrival time.Time) error {
	if speaker == "" {
		return ErrNoSpeaker
	}
	if len(payload) == 0 || len(payload) > maxPacket {
		return ErrPacketSize
	}
	if d, err := oggopus.PacketDuration(payload); err != nil || d != FrameSamples {
		return ErrFrameLength
	}
	m.mu.Lock()
	if m.count == len(m.queue) {
		m.mu.Unlock()
		m.stats.queueDrops.Add(1)
		return ErrQueueFull
	}
	q := &m.queue[(m.head+m.count)%len(m.queue)]
	q.speaker, q.ts, q.arrival = speaker, timestamp, arrival.Sub(m.cfg.Start)
	q.n = copy(q.data[:], payload)
	m.count++
	m.mu.Unlock()
	m.stats.received.Add(1)
	return nil
}

// SetMixes replaces, from the next frame on, the distinct mixes the
// mixer encodes. Until it is first called, the mixer encodes the shared
// mix and one mix-minus per speaker; after, exactly mixes (none: nothing
// is encoded). A policy that knows its listeners asks only for the mixes
// someone hears, such as the mix without the speakers a device already
// hears on its other slots. It copies mixes and may allocate: call it when
// the listeners change, not per packet. Safe for concurrent use.
func (m *Mixer) SetMixes(mixes []Mix) {
	cp := make([]Mix, len(mixes))
	for i, x := range mixes {
		cp[i] = Mix{Key: x.Key, Without: append([]string(nil), x.Without...)}
	}
	m.mu.Lock()
	m.pending, m.hasPending = cp, true
	m.mu.Unlock()
}

// applyMixes takes the mix set of the last SetMixes, keeping the encoder
// of each mix whose key stays. On Run's goroutine.
func (m *Mixer) applyMixes() {
	m.mu.Lock()
	pending, ok := m.pending, m.hasPending
	m.pending, m.hasPending = nil, false
	m.mu.Unlock()
	if !ok {
		return
	}
	old := m.mixes
	m.mixes = make([]*setMix, 0, len(pending))
	for _, x := range pending {
		var out *mixOut
		for i, o := range old {
			if o != nil && o.Key == x.Key {
				out, old[i] = o.out, nil
				break
			}
		}
		if out == nil {
			out = m.spareOut()
			if out == nil {
				continue
			}
		}
		m.mixes = append(m.mixes, &setMix{Mix: x, out: out})
	}
	for _, o := range old {
		if o != nil {
			m.spareOuts = append(m.spareOuts, o.out)
		}
	}
	m.custom = true
}

// spareOut returns a reset encoder for a new mix, nil if none can be
// made (counted as an encode error).
func (m *Mixer) spareOut() *mixOut {
	if n := len(m.spareOuts); n > 0 {
		o := m.spareOuts[n-1]
		m.spareOuts = m.spareOuts[:n-1]
		o.enc.Reset()
		if err := configureEncoder(o.enc, m.cfg.Bitrate, m.cfg.ExpectedLoss); err == nil {
			if err := o.enc.SetComplexity(m.cfg.Complexity); err == nil {
				o.lim.reset()
				return o
			}
		}
	}
	enc, err := m.newEncoder()
	if err != nil {
		m.stats.encodeErrors.Add(1)
		return nil
	}
	return &mixOut{enc: enc}
}

// Run mixes until ctx ends (it then returns nil) or Config.Ticks is
// closed. Only one Run may be active on a Mixer.
func (m *Mixer) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("mix: Run already active")
	}
	defer m.running.Store(false)
	ticks := m.cfg.Ticks
	if ticks == nil {
		t := time.NewTicker(FrameDuration)
		defer t.Stop()
		ticks = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case now, ok := <-ticks:
			if !ok {
				return nil
			}
			m.tick(now)
		}
	}
}

// tick mixes every frame that has ended by now.
func (m *Mixer) tick(now time.Time) {
	due := int64(now.Sub(m.cfg.Start) / FrameDuration) // frames [0, due) have ended
	if due-m.next > maxCatchUp {
		m.stats.skipped.Add(uint64(due - maxCatchUp - m.next))
		m.next = due - maxCatchUp
	}
	m.drain()
	m.applyMixes()
	for ; m.next < due; m.next++ {
		m.mixFrame(m.next)
	}
}

// drain moves the queued packets into the speakers' jitter buffers.
func (m *Mixer) drain() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for ; m.count > 0; m.count-- {
		q := &m.queue[m.head]
		m.head = (m.head + 1) % len(m.queue)
		m.buffer(q)
	}
}

// Stats returns the counters so far.
func (m *Mixer) Stats() Stats {
	c := &m.stats
	return Stats{
		Received: c.received.Load(), QueueDrops: c.queueDrops.Load(), SpeakerDrops: c.speakerDrops.Load(),
		LateDrops: c.lateDrops.Load(), DuplicateDrops: c.duplicateDrops.Load(), Resyncs: c.resyncs.Load(),
		Decoded: c.decoded.Load(), Recovered: c.recovered.Load(), Concealed: c.concealed.Load(),
		DecodeErrors: c.decodeErrors.Load(), Frames: c.frames.Load(), Encoded: c.encoded.Load(),
		EncodeErrors: c.encodeErrors.Load(), SkippedFrames: c.skipped.Load(), Joins: c.joins.Load(),
		Leaves: c.leaves.Load(),
	}
}
