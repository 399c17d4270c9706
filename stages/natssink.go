package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/session"
)

// NATSSinkKind is the NATS sink's kind name.
const NATSSinkKind = "nats-sink"

// NATSSinkSettings configure where bites go.
type NATSSinkSettings struct {
	// BiteSubject carries a beep.Bite per bite.
	BiteSubject string `yaml:"bite_subject"`
	// StoreSubject carries beep.Store{type:"bite"} per bite; "" disables it.
	StoreSubject string `yaml:"store_subject"`
	// Queue is how many bites may wait for NATS; more are dropped, counted.
	Queue int `yaml:"queue"`
}

var natsSinkKind = pipeline.Define(NATSSinkKind,
	"publishes bites on NATS as Beep's protobuf Bite and Store messages",
	NATSSinkSettings{BiteSubject: "bite", StoreSubject: "store", Queue: 1024},
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
// one goroutine publishes. A slow or absent NATS costs dropped bites, which
// are counted and logged, never a stalled track.
type NATSSink struct {
	nc  *nats.Conn
	s   NATSSinkSettings
	log *slog.Logger

	queue   chan queued
	stop    chan struct{}
	done    chan struct{}
	stopped atomic.Bool

	published atomic.Uint64
	dropped   atomic.Uint64
	failed    atomic.Uint64
	dropLog   throttle.Gate
	failLog   throttle.Gate
	latency   prometheus.Observer // nil without metrics
}

// queued is a bite waiting for NATS, with the time it was queued.
type queued struct {
	b  *pipeline.Bite
	at time.Time
}

// Stats reports bites published, dropped (queue full) and refused by NATS.
func (k *NATSSink) Stats() map[string]uint64 {
	return map[string]uint64{"published": k.published.Load(), "drop_queue_full": k.dropped.Load(), "drop_publish_error": k.failed.Load()}
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
	}
	if log == nil {
		log = slog.Default()
	}
	k := &NATSSink{
		nc: nc, s: s, log: log,
		queue: make(chan queued, s.Queue),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	k.dropLog.Every = 10 * time.Second
	k.failLog.Every = 10 * time.Second
	go k.run()
	return k, nil
}

// Published, Dropped and Failed count bites sent, dropped because the queue
// was full, and refused by the NATS client.
func (k *NATSSink) Published() uint64 { return k.published.Load() }

// Dropped returns how many bites were dropped because the queue was full.
func (k *NATSSink) Dropped() uint64 { return k.dropped.Load() }

// Failed returns how many bites the NATS client refused.
func (k *NATSSink) Failed() uint64 { return k.failed.Load() }

// Open returns the sink's processor for a track.
func (k *NATSSink) Open(*session.Track, pipeline.Emit) (pipeline.Processor, error) {
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
	for {
		select {
		case q := <-k.queue:
			k.publish(q)
		case <-k.stop:
			for {
				select {
				case q := <-k.queue:
					k.publish(q)
				default:
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

func (k *NATSSink) publish(q queued) {
	b := q.b
	msg := Message(b)
	err := k.send(k.s.BiteSubject, msg)
	if err == nil && k.s.StoreSubject != "" {
		err = k.send(k.s.StoreSubject, &beeppb.Store{Type: "bite", Bite: msg})
	}
	if err != nil {
		k.failed.Add(1)
		if ok, n := k.failLog.Allow(time.Now()); ok {
			k.log.Warn("bite not published", "conversation", b.Conversation, "err", err, "suppressed", n)
		}
		return
	}
	k.published.Add(1)
	if k.latency != nil {
		k.latency.Observe(time.Since(q.at).Seconds())
	}
}

func (k *NATSSink) send(subject string, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal: %w", err)
	}
	if err := k.nc.Publish(subject, data); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
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
	if !k.nc.IsConnected() {
		return nil
	}
	if err := k.nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("nats sink: flush: %w", err)
	}
	return nil
}
