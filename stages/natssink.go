package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// NATSSinkKind is the NATS sink's kind name.
const NATSSinkKind = "nats-sink"

// NATSSinkSettings configure where bites go. Each field's doc tag is its
// documentation, the comment router -print-pipeline writes above it.
type NATSSinkSettings struct {
	BiteSubject  string            `yaml:"bite_subject" doc:"NATS subject of a beep.Bite per bite"`
	StoreSubject string            `yaml:"store_subject" doc:"NATS subject of a beep.Store{type: \"bite\"} per bite; \"\" sends none"`
	Queue        int               `yaml:"queue" doc:"bites that may wait for the publisher; more are dropped and counted"`
	SpoolBytes   int               `yaml:"spool_bytes" doc:"bytes of bites held while NATS is unreachable (64 MiB), sent in order when it returns; past it new bites are dropped, counted and logged"`
	SpoolDir     string            `yaml:"spool_dir" doc:"spool in this directory instead of memory, so that held bites survive a restart; \"\": in memory"`
	JetStream    bool              `yaml:"jetstream" doc:"publish with acknowledgement: a bite leaves the spool only once a JetStream stream holds it (at-least-once); the streams must exist"`
	AckTimeout   pipeline.Duration `yaml:"ack_timeout" doc:"longest wait for one JetStream acknowledgement"`
	Retry        pipeline.Duration `yaml:"retry" doc:"how often a non-empty spool tries NATS again"`
}

var natsSinkKind = pipeline.Define(NATSSinkKind,
	"publishes bites on NATS as Beep's protobuf Bite and Store messages",
	NATSSinkSettings{
		BiteSubject: "bite", StoreSubject: "store", Queue: 1024,
		SpoolBytes: 64 << 20, AckTimeout: pipeline.Duration(5 * time.Second), Retry: pipeline.Duration(250 * time.Millisecond),
	},
	func(env pipeline.Env, name string, s *NATSSinkSettings) (pipeline.Stage, error) {
		k, err := NewNATSSink(env.NATS, *s, env.Logger)
		if err != nil {
			return nil, err
		}
		if env.Metrics != nil {
			h := prometheus.NewHistogram(prometheus.HistogramOpts{
				Name:        "router_nats_publish_seconds",
				Help:        "Time from a bite entering the NATS sink's queue to its publication.",
				ConstLabels: prometheus.Labels{"stage": name},
				Buckets:     prometheus.ExponentialBuckets(10e-6, 4, 10),
			})
			if err := env.Metrics.Register(h); err != nil {
				_ = k.Close(context.Background())
				return nil, err
			}
			k.latency = h
		}
		return k, nil
	})

// NATSSink publishes bites asynchronously: the media path only enqueues,
// one goroutine publishes. While NATS is unreachable, bites wait in a
// bounded spool and go out in order when it returns; past the spool's size
// they are dropped, counted and logged. Nothing of this stalls a track.
//
// Core NATS publishing cannot know whether a message written just before a
// disconnect arrived; with JetStream set, a bite counts as sent only when
// acknowledged.
type NATSSink struct {
	nc    *nats.Conn
	js    jetstream.JetStream // nil unless JetStream
	s     NATSSinkSettings
	log   *slog.Logger
	spool spool

	queue   chan queued
	stop    chan struct{}
	done    chan struct{}
	stopped atomic.Bool

	published atomic.Uint64
	dropped   atomic.Uint64
	failed    atomic.Uint64
	spoolFull atomic.Uint64
	spoolErr  atomic.Uint64 // the spool could not store a bite (disk full)
	lost      atomic.Uint64 // spooled in memory at shutdown
	held      atomic.Int64  // messages in the spool now
	dropLog   throttle.Gate
	failLog   throttle.Gate
	downLog   throttle.Gate
	spoolLog  throttle.Gate
	latency   prometheus.Observer // nil without metrics
}

// queued is a bite waiting for NATS, with the time it was queued.
type queued struct {
	b  *pipeline.Bite
	at time.Time
}

// Stats reports bites published, dropped (queue full, spool full, spool
// write failed, refused by NATS, left in a memory spool at shutdown) and the
// messages spooled now.
func (k *NATSSink) Stats() map[string]uint64 {
	return map[string]uint64{
		"published":          k.published.Load(),
		"drop_queue_full":    k.dropped.Load(),
		"drop_spool_full":    k.spoolFull.Load(),
		"drop_spool_write":   k.spoolErr.Load(),
		"drop_publish_error": k.failed.Load(),
		"drop_shutdown":      k.lost.Load(),
		"spooled":            uint64(max(k.held.Load(), 0)),
	}
}

// NewNATSSink starts a sink publishing on nc.
func NewNATSSink(nc *nats.Conn, s NATSSinkSettings, log *slog.Logger) (*NATSSink, error) {
	switch {
	case nc == nil:
		return nil, errors.New("no NATS connection")
	case s.BiteSubject == "":
		return nil, errors.New("bite_subject is empty")
	case s.Queue <= 0:
		return nil, errors.New("queue must be positive")
	case s.SpoolBytes <= 0:
		return nil, errors.New("spool_bytes must be positive")
	case s.AckTimeout <= 0 || s.Retry <= 0:
		return nil, errors.New("ack_timeout and retry must be positive")
	}
	if log == nil {
		log = slog.Default()
	}
	var sp spool = &memSpool{max: s.SpoolBytes}
	if s.SpoolDir != "" {
		ds, err := openDirSpool(s.SpoolDir, s.SpoolBytes)
		if err != nil {
			return nil, err
		}
		if n := ds.len(); n > 0 {
			log.Info("sending bites spooled by an earlier run", "messages", n, "dir", s.SpoolDir)
		}
		sp = ds
	}
	var js jetstream.JetStream
	if s.JetStream {
		var err error
		if js, err = jetstream.New(nc); err != nil {
			return nil, fmt.Errorf("jetstream: %w", err)
		}
	}
	k := &NATSSink{
		nc: nc, js: js, s: s, log: log, spool: sp,
		queue: make(chan queued, s.Queue),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	k.held.Store(int64(sp.len()))
	k.dropLog.Every = 10 * time.Second
	k.failLog.Every = 10 * time.Second
	k.downLog.Every = 30 * time.Second
	k.spoolLog.Every = 10 * time.Second
	go k.run()
	return k, nil
}

// Open returns the sink's processor for a track.
func (k *NATSSink) Open(*room.Track, pipeline.Emit) (pipeline.Processor, error) {
	return natsSinkProc{k}, nil
}

type natsSinkProc struct{ k *NATSSink }

func (natsSinkProc) HandlePacket(*pipeline.Packet) bool { return true }
func (natsSinkProc) Close()                             {}

// HandleBite enqueues b without blocking.
func (sp natsSinkProc) HandleBite(b *pipeline.Bite) {
	k := sp.k
	if !k.stopped.Load() {
		select {
		case k.queue <- queued{b, time.Now()}:
			return
		default:
		}
	}
	k.dropped.Add(1)
	if ok, n := k.dropLog.Allow(time.Now()); ok {
		k.log.Warn("bite dropped: NATS queue full", "conversation", b.Conversation, "queue", k.s.Queue, "suppressed", n)
	}
}

func (k *NATSSink) run() {
	defer close(k.done)
	retry := time.NewTicker(k.s.Retry.D())
	defer retry.Stop()
	for {
		select {
		case q := <-k.queue:
			k.accept(q)
		case <-retry.C:
			k.drain()
		case <-k.stop:
			for {
				select {
				case q := <-k.queue:
					k.accept(q)
				default:
					k.drain()
					return
				}
			}
		}
	}
}

// Message converts a bite to its wire form.
func Message(b *pipeline.Bite) *beeppb.Bite {
	return &beeppb.Bite{
		Key:        b.Conversation,
		Start:      uint64(b.Start.Unix()),
		StartMs:    uint64(b.Start.UnixMilli()),
		Data:       b.Data,
		User:       b.UserID,
		Client:     b.ClientID,
		DurationMs: uint32(b.Duration / time.Millisecond),
		Format:     b.Format,
		Seq:        b.Seq,
	}
}

// accept sends a bite's messages, or spools them behind those waiting.
func (k *NATSSink) accept(q queued) {
	msg := Message(q.b)
	data, err := proto.Marshal(msg)
	if err != nil {
		k.failed.Add(1)
		return
	}
	msgs := []spooled{{subject: k.s.BiteSubject, data: data, bite: true}}
	if k.s.StoreSubject != "" {
		store, err := proto.Marshal(&beeppb.Store{Type: "bite", Bite: msg})
		if err != nil {
			k.failed.Add(1)
			return
		}
		msgs = append(msgs, spooled{subject: k.s.StoreSubject, data: store})
	}
	for _, m := range msgs {
		if k.spool.len() == 0 {
			err := k.send(m)
			if err == nil {
				k.sent(m, q.at)
				continue
			}
			if !errors.Is(err, errNATSDown) {
				k.failed.Add(1)
				if ok, n := k.failLog.Allow(time.Now()); ok {
					k.log.Warn("bite not published", "conversation", q.b.Conversation, "err", err, "suppressed", n)
				}
				return
			}
		}
		if err := k.spool.push(m); errors.Is(err, errSpoolFull) {
			k.spoolFull.Add(1)
			if ok, n := k.dropLog.Allow(time.Now()); ok {
				k.log.Error("bite dropped: NATS unreachable and the spool is full", "conversation", q.b.Conversation, "spool_bytes", k.s.SpoolBytes, "suppressed", n)
			}
			return
		} else if err != nil {
			k.spoolErr.Add(1)
			if ok, n := k.spoolLog.Allow(time.Now()); ok {
				k.log.Error("bite dropped: NATS unreachable and the spool cannot be written", "conversation", q.b.Conversation, "dir", k.s.SpoolDir, "err", err, "suppressed", n)
			}
			return
		}
		k.held.Add(1)
		if ok, _ := k.downLog.Allow(time.Now()); ok {
			k.log.Warn("NATS unreachable: spooling bites", "spooled", k.spool.len())
		}
	}
}

// drain sends spooled messages, oldest first, until NATS refuses one.
func (k *NATSSink) drain() {
	sent := 0
	for {
		m, ok := k.spool.peek()
		if !ok {
			break
		}
		if err := k.send(m); err != nil {
			break
		}
		if err := k.spool.pop(); err != nil {
			k.log.Warn("spool: remove sent message", "err", err)
		}
		k.held.Add(-1)
		k.sent(m, time.Time{})
		sent++
	}
	if sent > 0 {
		k.log.Info("sent spooled bite messages", "messages", sent, "left", k.spool.len())
	}
}

func (k *NATSSink) sent(m spooled, queuedAt time.Time) {
	if !m.bite {
		return
	}
	k.published.Add(1)
	if k.latency != nil && !queuedAt.IsZero() {
		k.latency.Observe(time.Since(queuedAt).Seconds())
	}
}

// errNATSDown means the message should wait in the spool.
var errNATSDown = errors.New("nats unreachable")

// send publishes one message: fire-and-forget on core NATS, acknowledged
// with JetStream.
func (k *NATSSink) send(m spooled) error {
	if !k.nc.IsConnected() {
		return errNATSDown
	}
	if k.js != nil {
		ctx, cancel := context.WithTimeout(context.Background(), k.s.AckTimeout.D())
		defer cancel()
		if _, err := k.js.Publish(ctx, m.subject, m.data); err != nil {
			if ok, n := k.failLog.Allow(time.Now()); ok {
				k.log.Warn("JetStream did not acknowledge a bite: keeping it", "subject", m.subject, "err", err, "suppressed", n)
			}
			return fmt.Errorf("%w: %v", errNATSDown, err)
		}
		return nil
	}
	if err := k.nc.Publish(m.subject, m.data); err != nil {
		if errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionReconnecting) {
			return fmt.Errorf("%w: %v", errNATSDown, err)
		}
		return fmt.Errorf("publish %s: %w", m.subject, err)
	}
	return nil
}

// Close publishes the queued bites and flushes them to the server, until
// ctx ends. Call it once every track is closed.
func (k *NATSSink) Close(ctx context.Context) error {
	if k.stopped.Swap(true) {
		return nil
	}
	close(k.stop)
	select {
	case <-k.done:
	case <-ctx.Done():
		return fmt.Errorf("nats sink: %d bites still queued: %w", len(k.queue), ctx.Err())
	}
	if n := k.spool.len(); n > 0 {
		if k.s.SpoolDir != "" {
			k.log.Warn("NATS unreachable at shutdown: spooled bites stay on disk for the next start", "messages", n, "dir", k.s.SpoolDir)
		} else {
			k.lost.Add(uint64(n))
			k.log.Error("NATS unreachable at shutdown: spooled bites lost (set spool_dir to keep them)", "messages", n)
		}
	}
	if !k.nc.IsConnected() {
		return nil
	}
	if err := k.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("nats sink: flush: %w", err)
	}
	return nil
}
