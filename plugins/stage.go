package plugins

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins/protocol"
	"github.com/beepvoice/router/room"
)

// Stage is a pipeline stage backed by a plugin process.
type Stage struct {
	name    string
	s       Settings
	log     *slog.Logger
	nc      *nats.Conn
	config  []byte // Settings.Config as JSON
	subject string // default result subject
	allowed []string

	q       *queue
	streams *streams

	wantPackets atomic.Bool
	wantBites   atomic.Bool
	stopping    atomic.Bool
	disabled    atomic.Bool
	stop        chan struct{}
	done        chan struct{}

	// sendingSince is when the send in progress began (unix ns), 0 if none:
	// the health monitor's stall detector reads it.
	sendingSince atomic.Int64
	pid          atomic.Int64

	stats   counters
	dropLog throttle.Gate
	badLog  throttle.Gate

	// onResult, for tests, sees every accepted result.
	onResult func(*protocol.Result)
}

type counters struct {
	enqueued, dropped, sent, batches atomic.Uint64
	results, rejected, unpublished   atomic.Uint64
	starts, failures                 atomic.Uint64
}

// Stats are a plugin stage's counters.
type Stats struct {
	// Enqueued and Dropped count packets and bites queued for the plugin,
	// and those dropped because the queue was full or the plugin was down.
	Enqueued, Dropped uint64
	// Sent counts packets and bites handed to gRPC, in Batches messages.
	Sent, Batches uint64
	// Results counts results published; Rejected those refused (bad
	// subject, conversation or size); Unpublished those NATS refused or
	// that had no NATS to go to.
	Results, Rejected, Unpublished uint64
	// Starts counts plugin processes started; Failures those that crashed,
	// hung or failed to start.
	Starts, Failures uint64
	// Disabled reports that the plugin failed too often and is off.
	Disabled bool
	// PID is the running plugin process, 0 if none.
	PID int
}

// New starts the plugin named name with settings s. The first start is
// synchronous, so that a missing program, a refused handshake or a refused
// configuration stops the router at start with a clear error.
func New(env pipeline.Env, name string, s Settings) (*Stage, error) {
	return newStage(env, name, s, nil)
}

func newStage(env pipeline.Env, name string, s Settings, onResult func(*protocol.Result)) (*Stage, error) {
	cfg, err := s.validate()
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	st := &Stage{
		name: name, s: s, log: log, nc: env.NATS, config: cfg,
		subject:  "plugin." + name,
		allowed:  s.Subjects,
		q:        newQueue(s.Queue),
		streams:  newStreams(),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		onResult: onResult,
	}
	if !validSubject(st.subject, false) {
		return nil, fmt.Errorf("plugin %s: stage name makes no NATS subject", name)
	}
	if len(st.allowed) == 0 {
		st.allowed = []string{st.subject, st.subject + ".>"}
	}
	st.dropLog.Every = 10 * time.Second
	st.badLog.Every = 10 * time.Second
	if st.nc == nil {
		log.Warn("plugin results will not be published: no NATS connection")
	}
	sess, err := st.start()
	if err != nil {
		return nil, err
	}
	go st.run(sess)
	return st, nil
}

// Name returns the stage's name.
func (st *Stage) Name() string { return st.name }

// Stats returns the stage's counters.
func (st *Stage) Stats() Stats {
	c := &st.stats
	return Stats{
		Enqueued: c.enqueued.Load(), Dropped: c.dropped.Load(),
		Sent: c.sent.Load(), Batches: c.batches.Load(),
		Results: c.results.Load(), Rejected: c.rejected.Load(), Unpublished: c.unpublished.Load(),
		Starts: c.starts.Load(), Failures: c.failures.Load(),
		Disabled: st.disabled.Load(), PID: int(st.pid.Load()),
	}
}

// Open returns the stage's processor for one track. Plugins get audio
// only, for now: a video track passes by (and its bites, having none).
func (st *Stage) Open(t *room.Track, _ pipeline.Emit) (pipeline.Processor, error) {
	if t.Kind != webrtc.RTPCodecTypeAudio {
		return pipeline.Nop{}, nil
	}
	return &proc{st: st, track: t}, nil
}

// Close stops the plugin: what is queued is sent, the stream is
// half-closed, the plugin gets up to stop_timeout to finish its work and
// exit, and is killed if it does not. Call it once every track is closed.
func (st *Stage) Close(ctx context.Context) error {
	if st.stopping.Swap(true) {
		return nil
	}
	close(st.stop)
	select {
	case <-st.done:
	case <-ctx.Done():
		return fmt.Errorf("plugin %s: stopping: %w", st.name, ctx.Err())
	}
	s := st.Stats()
	st.log.Info("plugin stage closed", "enqueued", s.Enqueued, "dropped", s.Dropped,
		"results", s.Results, "rejected", s.Rejected, "starts", s.Starts, "failures", s.Failures)
	return nil
}

// drop counts a packet or bite that could not be queued.
func (st *Stage) drop(what string) {
	st.stats.dropped.Add(1)
	if ok, n := st.dropLog.Allow(time.Now()); ok {
		st.log.Warn("plugin queue full: dropping "+what, "queue", st.s.Queue, "suppressed", n)
	}
}

// proc is the stage's processor for one track. It never stops a packet.
type proc struct {
	st    *Stage
	track *room.Track

	conv   *room.Conversation // conversation of the current stream
	stream uint32             // current stream id, 0 if none
}

// HandlePacket queues a copy of p for the plugin, never blocking.
func (pp *proc) HandlePacket(p *pipeline.Packet) bool {
	st := pp.st
	if !st.wantPackets.Load() || st.stopping.Load() {
		return true
	}
	if p.Conversation != pp.conv {
		pp.switchTo(p.Conversation)
	}
	if pp.stream == 0 {
		return true
	}
	it := st.q.get()
	if it == nil {
		st.drop("packets")
		return true
	}
	it.stream = pp.stream
	it.arrival = p.Arrival.UnixNano()
	it.level, it.hasLevel, it.voice = p.Level, p.HasLevel, p.Voice
	it.buf = append(it.buf[:0], p.Raw...)
	st.q.put(it)
	st.stats.enqueued.Add(1)
	return true
}

// switchTo ends the current stream and starts one for conversation c, if
// the plugin sees c.
func (pp *proc) switchTo(c *room.Conversation) {
	if pp.stream != 0 {
		pp.st.streams.close(pp.stream)
		pp.stream = 0
	}
	pp.conv = c
	if c == nil || !matchConversation(pp.st.s.Conversations, c.ID) {
		return
	}
	cl := pp.track.Claim()
	pp.stream = pp.st.streams.add(&protocol.StreamInfo{
		Conversation: c.ID, User: cl.UserID, Client: cl.ClientID,
		Track: pp.track.ID, Ssrc: pp.track.SSRC,
	})
}

// HandleBite queues b for the plugin, never blocking. Bites are immutable,
// so the queue holds the pointer.
func (pp *proc) HandleBite(b *pipeline.Bite) {
	st := pp.st
	if !st.wantBites.Load() || st.stopping.Load() || !matchConversation(st.s.Conversations, b.Conversation) {
		return
	}
	it := st.q.get()
	if it == nil {
		st.drop("bites")
		return
	}
	it.bite = b
	st.q.put(it)
	st.stats.enqueued.Add(1)
}

// Close ends the track's stream.
func (pp *proc) Close() {
	if pp.stream != 0 {
		pp.st.streams.close(pp.stream)
		pp.stream = 0
	}
	pp.conv = nil
}
