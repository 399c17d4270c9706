package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/mix"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// MixerKind is the mixing stage's kind name.
const MixerKind = "mixer"

// MixerSettings configure the mixing stage. Each field's doc tag is its
// documentation, the comment router -print-pipeline writes above it.
type MixerSettings struct {
	Mode       string            `yaml:"mode" doc:"off: devices hear forwarded speakers only; overflow: a device with fewer slots than the active speakers it would hear gets those that do not fit mixed on its last slot, never its own voice; always: every device hears one mix of its conversation on its first slot"`
	Jitter     pipeline.Duration `yaml:"jitter" doc:"jitter buffer of each mixed speaker: its first packet is mixed this long after it arrived (20ms to 200ms)"`
	Bitrate    int               `yaml:"bitrate" doc:"Opus bitrate of each mix, bits per second (6000 to 510000)"`
	Hangover   pipeline.Duration `yaml:"hangover" doc:"a mixed speaker that sends nothing this long leaves the mix (at least 20ms)"`
	Complexity int               `yaml:"complexity" doc:"Opus encoder complexity of the mixes, 0 to 10 (CPU per mix: docs/performance.md)"`
}

// DefaultMixerSettings are the mixer's defaults.
var DefaultMixerSettings = MixerSettings{
	Mode:       room.MixOverflow.String(),
	Jitter:     pipeline.Duration(mix.DefaultJitter),
	Bitrate:    mix.DefaultBitrate,
	Hangover:   pipeline.Duration(mix.DefaultHangover),
	Complexity: mix.DefaultComplexity,
}

var mixerKind = pipeline.Define(MixerKind,
	"mixes, for devices with fewer slots than the active speakers, the speakers they do not otherwise hear (mix-minus); one Opus encode per distinct mix, none where everyone has enough slots",
	DefaultMixerSettings,
	func(env pipeline.Env, name string, s *MixerSettings) (pipeline.Stage, error) {
		return NewMixer(*s, env)
	})

// parseMixMode reads the mode setting.
func parseMixMode(s string) (room.MixMode, error) {
	for _, m := range []room.MixMode{room.MixOff, room.MixOverflow, room.MixAlways} {
		if s == m.String() {
			return m, nil
		}
	}
	return room.MixOff, fmt.Errorf("mode %q: want off, overflow or always", s)
}

// Mixer is the mixing stage. It implements room.Mixing: the room's speaker
// policy decides which devices hear which mix and starts a session per
// conversation while any device needs one (room/mixing.go); the stage's
// processors push each mixed speaker's packets into its conversation's
// session, whose goroutine decodes, mixes, encodes and sends (package mix).
// A conversation where nobody needs a mix costs one atomic load per packet.
type Mixer struct {
	settings MixerSettings
	mode     room.MixMode
	cfg      mix.Config // the engine's settings, without Output
	log      *slog.Logger
	errLog   throttle.Gate
	latency  prometheus.Observer // nil without metrics

	mu       sync.Mutex
	sessions map[*mixSession]struct{}
	closed   bool
	ended    mix.Stats // what stopped sessions counted

	sent, failed, unmixable atomic.Uint64
	started, stopped        atomic.Uint64
}

// NewMixer returns a mixing stage with settings s, refusing bad values
// with an error that names the setting.
func NewMixer(s MixerSettings, env pipeline.Env) (*Mixer, error) {
	mode, err := parseMixMode(s.Mode)
	if err != nil {
		return nil, err
	}
	switch {
	case s.Jitter.D() < mix.FrameDuration || s.Jitter.D() > 200*time.Millisecond:
		return nil, fmt.Errorf("jitter %v: want 20ms to 200ms", s.Jitter.D())
	case s.Bitrate < 6000 || s.Bitrate > 510000:
		return nil, fmt.Errorf("bitrate %d: want 6000 to 510000 bits per second", s.Bitrate)
	case s.Hangover.D() < mix.FrameDuration:
		return nil, fmt.Errorf("hangover %v: want at least 20ms", s.Hangover.D())
	case s.Complexity < 0 || s.Complexity > 10:
		return nil, fmt.Errorf("complexity %d: want 0 to 10", s.Complexity)
	}
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Mixer{
		settings: s,
		mode:     mode,
		cfg:      mix.Config{Jitter: s.Jitter.D(), Bitrate: s.Bitrate, Hangover: s.Hangover.D(), Complexity: s.Complexity},
		log:      log,
		sessions: map[*mixSession]struct{}{},
	}
	// The engine checks the rest; fail now rather than at a first mix.
	probe := m.cfg
	probe.Output = func(mix.Frame) {}
	if _, err := mix.New(probe); err != nil {
		return nil, err
	}
	if env.Metrics != nil {
		if err := m.register(env.Metrics); err != nil {
			return nil, fmt.Errorf("mixer metrics: %w", err)
		}
	}
	return m, nil
}

// MixMode implements room.Mixing.
func (m *Mixer) MixMode() room.MixMode { return m.mode }

// StartMixing implements room.Mixing: it starts the mixing goroutine of
// conversation c. It never blocks.
func (m *Mixer) StartMixing(c *room.Conversation) room.MixSession {
	s := &mixSession{st: m, conv: c.ID, done: make(chan struct{})}
	cfg := m.cfg
	cfg.Output = s.output
	eng, err := mix.New(cfg)
	if err != nil { // validated in NewMixer: not expected
		if allow, n := m.errLog.Allow(time.Now()); allow {
			m.log.Error("mixer not started", "conversation", c.ID, "err", err, "suppressed", n)
		}
		close(s.done)
		return s
	}
	s.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		cancel()
		close(s.done)
		s.eng = nil
		return s
	}
	m.sessions[s] = struct{}{}
	m.mu.Unlock()
	m.started.Add(1)
	go func() {
		defer close(s.done)
		defer func() {
			// A codec panic costs this conversation its mix, not the
			// router; its pushes then fill the queue and are dropped.
			if r := recover(); r != nil {
				m.log.Error("panic: mixer stopped", "conversation", c.ID, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		if err := eng.Run(ctx); err != nil {
			m.log.Error("mixer stopped", "conversation", c.ID, "err", err)
		}
	}()
	return s
}

// mixSession mixes one conversation: a mix.Mixer on its own goroutine,
// whose frames go to the room's mixes.
type mixSession struct {
	st     *Mixer
	conv   string
	eng    *mix.Mixer // nil if it could not start
	cancel context.CancelFunc
	done   chan struct{}
	mixes  atomic.Pointer[map[string]*room.Mix]
	once   sync.Once
}

// SetMixes implements room.MixSession.
func (s *mixSession) SetMixes(mixes []*room.Mix) {
	if s.eng == nil {
		return
	}
	byKey := make(map[string]*room.Mix, len(mixes))
	spec := make([]mix.Mix, len(mixes))
	for i, x := range mixes {
		byKey[x.Key] = x
		spec[i] = mix.Mix{Key: x.Key, Without: x.Without}
	}
	s.mixes.Store(&byKey)
	s.eng.SetMixes(spec)
}

// Stop implements room.MixSession: it ends the goroutine and waits for it
// (at most one frame's work), so that nothing is written after.
func (s *mixSession) Stop() {
	s.once.Do(func() {
		if s.eng == nil {
			return
		}
		s.cancel()
		<-s.done
		st := s.st
		st.mu.Lock()
		delete(st.sessions, s)
		addStats(&st.ended, s.eng.Stats())
		st.mu.Unlock()
		st.stopped.Add(1)
	})
}

// output sends one encoded frame to the mix it is for, on the session's
// goroutine.
func (s *mixSession) output(f mix.Frame) {
	mp := s.mixes.Load()
	if mp == nil {
		return
	}
	x := (*mp)[f.Key]
	if x == nil {
		return // a mix no longer heard, in the frame of its change
	}
	now := time.Now()
	written, failed, err := x.Write(f.Payload, f.Timestamp, f.Level, f.Voices > 0, now)
	s.st.sent.Add(written)
	if written > 0 && !f.Arrival.IsZero() && s.st.latency != nil {
		s.st.latency.Observe(time.Since(f.Arrival).Seconds())
	}
	if failed > 0 {
		s.st.failed.Add(failed)
		if allow, n := s.st.errLog.Allow(now); allow {
			s.st.log.Warn("mix not sent", "conversation", s.conv, "err", err, "failed", failed, "suppressed", n)
		}
	}
}

// push queues one packet of a mixed speaker; it never blocks.
func (s *mixSession) push(p *pipeline.Packet) {
	if s.eng == nil {
		return
	}
	err := s.eng.Push(p.Track.ID, p.RTP.Timestamp, p.RTP.Payload, p.Arrival)
	if err != nil && !errors.Is(err, mix.ErrQueueFull) { // a full queue is counted by the engine
		s.st.unmixable.Add(1)
	}
}

// Open returns the mixer's processor for a track.
func (m *Mixer) Open(t *room.Track, _ pipeline.Emit) (pipeline.Processor, error) {
	if t.Video() || !strings.EqualFold(t.Codec.MimeType, webrtc.MimeTypeOpus) {
		return pipeline.Nop{}, nil
	}
	return mixerProc{}, nil
}

// mixerProc pushes a track's packets to its conversation's mix session
// while the policy has the track mixed: an atomic load per packet
// otherwise.
type mixerProc struct{ pipeline.Nop }

func (mixerProc) HandlePacket(p *pipeline.Packet) bool {
	c := p.Conversation
	if c == nil || !p.Track.Mixed() {
		return true
	}
	if s, ok := c.MixSession().(*mixSession); ok {
		s.push(p)
	}
	return true
}

// Relayed implements pipeline.Relayed: a router mixes, for its own
// devices, the speakers relayed from other routers too.
func (*Mixer) Relayed() bool { return true }

// Close stops the sessions left (the room stops them as conversations end;
// this is for a pipeline closed without its room).
func (m *Mixer) Close(context.Context) error {
	m.mu.Lock()
	m.closed = true
	left := make([]*mixSession, 0, len(m.sessions))
	for s := range m.sessions {
		left = append(left, s)
	}
	m.mu.Unlock()
	for _, s := range left {
		s.Stop()
	}
	return nil
}

// totals returns the engines' counts: stopped sessions and live ones.
func (m *Mixer) totals() (st mix.Stats, active int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st = m.ended
	for s := range m.sessions {
		addStats(&st, s.eng.Stats())
	}
	return st, len(m.sessions)
}

// mixesNow counts the distinct mixes of the live sessions.
func (m *Mixer) mixesNow() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for s := range m.sessions {
		if mp := s.mixes.Load(); mp != nil {
			n += len(*mp)
		}
	}
	return n
}

func addStats(to *mix.Stats, s mix.Stats) {
	to.Received += s.Received
	to.QueueDrops += s.QueueDrops
	to.SpeakerDrops += s.SpeakerDrops
	to.LateDrops += s.LateDrops
	to.DuplicateDrops += s.DuplicateDrops
	to.Resyncs += s.Resyncs
	to.Decoded += s.Decoded
	to.Recovered += s.Recovered
	to.Concealed += s.Concealed
	to.DecodeErrors += s.DecodeErrors
	to.Frames += s.Frames
	to.Encoded += s.Encoded
	to.EncodeErrors += s.EncodeErrors
	to.SkippedFrames += s.SkippedFrames
	to.Joins += s.Joins
	to.Leaves += s.Leaves
}

// Stats reports what the mixer did (router_stage_events_total): packets
// mixed and dropped, frames decoded and concealed, mixes encoded and sent.
func (m *Mixer) Stats() map[string]uint64 {
	st, _ := m.totals()
	return map[string]uint64{
		"sessions_started": m.started.Load(),
		"sessions_stopped": m.stopped.Load(),
		"received":         st.Received,
		"decoded":          st.Decoded,
		"recovered_fec":    st.Recovered,
		"concealed":        st.Concealed,
		"encoded":          st.Encoded,
		"sent":             m.sent.Load(),
		"drop_queue_full":  st.QueueDrops,
		"drop_late":        st.LateDrops,
		"drop_speakers":    st.SpeakerDrops,
		"drop_unmixable":   m.unmixable.Load(),
		"drop_write_error": m.failed.Load(),
		"decode_errors":    st.DecodeErrors,
		"encode_errors":    st.EncodeErrors,
		"frames_skipped":   st.SkippedFrames,
		"speaker_resyncs":  st.Resyncs,
		"drop_duplicate":   st.DuplicateDrops,
		"speakers_joined":  st.Joins,
		"speakers_left":    st.Leaves,
		"frames_mixed":     st.Frames,
	}
}

// register exports the router_mix_* metrics.
func (m *Mixer) register(r prometheus.Registerer) error {
	cs := []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "router_mix_conversations",
			Help: "Conversations being mixed now (a device in them needs a mix).",
		}, func() float64 { _, n := m.totals(); return float64(n) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "router_mix_mixes",
			Help: "Distinct mixes encoded now, over all conversations: one per group of devices that hear the same speakers mixed.",
		}, func() float64 { return float64(m.mixesNow()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "router_mix_encoded_total",
			Help: "Opus frames encoded by the mixer: one per distinct mix per 20 ms.",
		}, func() float64 { st, _ := m.totals(); return float64(st.Encoded) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "router_mix_decoded_total",
			Help: "Speaker frames decoded by the mixer (concealed ones included): one per mixed speaker per 20 ms.",
		}, func() float64 { st, _ := m.totals(); return float64(st.Decoded + st.Recovered + st.Concealed) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "router_mix_dropped_total",
			Help: "Speaker packets the mixer dropped: queue full, late, beyond its speakers, or not one 20 ms Opus frame.",
		}, func() float64 {
			st, _ := m.totals()
			return float64(st.QueueDrops + st.LateDrops + st.SpeakerDrops + m.unmixable.Load())
		}),
	}
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "router_mix_latency_seconds",
		Help: "Latency the mixer adds: from the arrival of the earliest speaker packet decoded into a mixed frame (kernel receive time where the system gives it) to the send of that frame's copies; the jitter buffer included.",
		// 1 ms to 1 s, 10 % apart.
		Buckets: prometheus.ExponentialBucketsRange(1e-3, 1, 73),
	})
	cs = append(cs, h)
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	m.latency = h
	return nil
}
