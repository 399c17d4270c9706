package stages

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/session"
)

// ForwarderKind is the forwarder's kind name.
const ForwarderKind = "forwarder"

// ForwarderSettings tune speaker selection.
type ForwarderSettings struct {
	// ThresholdDBov: a packet at least this loud (RFC 6464 level) is speech.
	ThresholdDBov int `yaml:"threshold_dbov"`
	// Hangover keeps a speaker active this long after its last loud packet,
	// so that slots do not flap between speakers at every pause.
	Hangover pipeline.Duration `yaml:"hangover"`
	// Retry is how often a speaker waiting for a slot asks again.
	Retry pipeline.Duration `yaml:"retry"`
}

var forwarderKind = pipeline.Define(ForwarderKind,
	"forwards the active speakers of a conversation to the other members' slots",
	ForwarderSettings{ThresholdDBov: -50, Hangover: pipeline.Duration(time.Second), Retry: pipeline.Duration(100 * time.Millisecond)},
	func(env pipeline.Env, name string, s *ForwarderSettings) (pipeline.Stage, error) {
		if s.ThresholdDBov > 0 || s.ThresholdDBov < -127 {
			return nil, errors.New("threshold_dbov must be between -127 and 0")
		}
		if s.Hangover <= 0 || s.Retry <= 0 {
			return nil, errors.New("hangover and retry must be positive")
		}
		f := &Forwarder{settings: *s, log: env.Logger}
		if env.Metrics != nil {
			h := prometheus.NewHistogram(prometheus.HistogramOpts{
				Name: "router_forward_latency_seconds",
				Help: "Latency the router adds to a forwarded packet: from the kernel's receive time of its datagram at the router's socket (when the system gives it; else the track reader's read) to the send of its last copy.",
				// 50 µs to 1 s, 23 % apart: fine enough for p99s of a few ms.
				Buckets: prometheus.ExponentialBucketsRange(50e-6, 1, 48),
			})
			if err := env.Metrics.Register(h); err != nil {
				return nil, fmt.Errorf("forward latency histogram: %w", err)
			}
			f.latency = h
		}
		return f, nil
	})

// Forwarder is the selective forwarding stage. Per packet it updates the
// publisher's speaking state, asks the conversation to reassign slots when a
// speaker starts (rare), and writes the packet to the slots that carry the
// publisher: no lookup, no allocation, no lock beyond each slot's own.
type Forwarder struct {
	settings ForwarderSettings
	log      *slog.Logger
	errLog   throttle.Gate
	latency  prometheus.Observer // nil without metrics

	// Counts are kept per track, so that publishers do not contend on one
	// counter; Stats sums the live tracks and what closed ones left.
	mu     sync.Mutex
	live   map[*forwarderProc]struct{}
	closed counts
}

// counts are a forwarder processor's counts.
type counts struct {
	forwarded, failed atomic.Uint64
}

// Stats reports packets written to slots and writes that failed.
func (f *Forwarder) Stats() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	fwd, failed := f.closed.forwarded.Load(), f.closed.failed.Load()
	for fp := range f.live {
		fwd += fp.count.forwarded.Load()
		failed += fp.count.failed.Load()
	}
	return map[string]uint64{"forwarded": fwd, "drop_write_error": failed}
}

// Open returns the forwarder's processor for a track.
func (f *Forwarder) Open(*session.Track, pipeline.Emit) (pipeline.Processor, error) {
	fp := &forwarderProc{f: f}
	f.mu.Lock()
	if f.live == nil {
		f.live = make(map[*forwarderProc]struct{})
	}
	f.live[fp] = struct{}{}
	f.mu.Unlock()
	return fp, nil
}

// Close does nothing: slots belong to their peers.
func (f *Forwarder) Close(context.Context) error { return nil }

type forwarderProc struct {
	f     *Forwarder
	count counts
}

func (fp *forwarderProc) HandlePacket(p *pipeline.Packet) bool {
	f := fp.f
	c := p.Conversation
	if c == nil {
		return true
	}
	t := p.Track
	now := p.Arrival.UnixNano()
	if p.Loud(f.settings.ThresholdDBov) && t.MarkActive(now, f.settings.Hangover.D()) {
		c.Reassign()
	} else if t.Waiting() && c.RetryDue(now, f.settings.Retry.D()) {
		c.Reassign()
	}
	level := p.LevelByte()
	var written uint64
	for _, s := range t.Targets(c) {
		ok, err := s.Write(t, c, &p.RTP, level, p.HasLevel, now)
		if err != nil {
			fp.count.failed.Add(1)
			if allow, n := f.errLog.Allow(p.Arrival); allow {
				f.log.Warn("forward failed", "track", t.ID, "err", err, "suppressed", n)
			}
			continue
		}
		if ok {
			written++
		}
	}
	if failed, err := t.Flush(); err != nil {
		fp.count.failed.Add(uint64(failed))
		if allow, n := f.errLog.Allow(p.Arrival); allow {
			f.log.Warn("forward failed", "track", t.ID, "err", err, "suppressed", n)
		}
	}
	if written > 0 {
		fp.count.forwarded.Add(written)
		if f.latency != nil {
			f.latency.Observe(time.Since(p.Arrival).Seconds())
		}
	}
	return true
}

func (*forwarderProc) HandleBite(*pipeline.Bite) {}

// Close hands the track's counts over to the forwarder.
func (fp *forwarderProc) Close() {
	f := fp.f
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.live, fp)
	f.closed.forwarded.Add(fp.count.forwarded.Load())
	f.closed.failed.Add(fp.count.failed.Load())
}
