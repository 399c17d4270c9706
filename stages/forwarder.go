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
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// ForwarderKind is the forwarder's kind name.
const ForwarderKind = "forwarder"

// ForwarderSettings tune speaker selection. Each field's doc tag is its
// documentation, the comment router -print-pipeline writes above it.
type ForwarderSettings struct {
	ThresholdDBov int               `yaml:"threshold_dbov" doc:"a packet at least this loud (RFC 6464 audio level, dBov, -127 to 0) is speech"`
	Hangover      pipeline.Duration `yaml:"hangover" doc:"a speaker stays active this long after its last loud packet, so that slots do not flap between speakers at every pause"`
	Retry         pipeline.Duration `yaml:"retry" doc:"how often a speaker waiting for a free slot asks again"`
	ShardMin      int               `yaml:"shard_min" doc:"a packet for at least twice this many slots is written by idle cores in parts of at least this many; 0: never"`
}

var forwarderKind = pipeline.Define(ForwarderKind,
	"forwards the active speakers of a conversation to the other members' slots",
	ForwarderSettings{ThresholdDBov: -50, Hangover: pipeline.Duration(time.Second), Retry: pipeline.Duration(100 * time.Millisecond), ShardMin: 32},
	func(env pipeline.Env, name string, s *ForwarderSettings) (pipeline.Stage, error) {
		if s.ThresholdDBov > 0 || s.ThresholdDBov < -127 {
			return nil, errors.New("threshold_dbov must be between -127 and 0")
		}
		if s.Hangover <= 0 || s.Retry <= 0 {
			return nil, errors.New("hangover and retry must be positive")
		}
		if s.ShardMin < 0 {
			return nil, errors.New("shard_min must not be negative")
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
		if s.ShardMin > 0 {
			f.pool = newPool()
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
	pool     *pool               // nil on one core or with shard_min 0

	// Counts are kept per track, so that publishers do not contend on one
	// counter; Stats sums the live tracks and what closed ones left.
	mu     sync.Mutex
	live   map[*forwarderProc]struct{}
	closed counts
}

// counts are a forwarder processor's counts.
type counts struct {
	forwarded, failed, sharded atomic.Uint64
}

// Stats reports packets written to slots, writes that failed, and the
// packets whose fan-out was split across cores.
func (f *Forwarder) Stats() map[string]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	fwd, failed, sharded := f.closed.forwarded.Load(), f.closed.failed.Load(), f.closed.sharded.Load()
	for fp := range f.live {
		fwd += fp.count.forwarded.Load()
		failed += fp.count.failed.Load()
		sharded += fp.count.sharded.Load()
	}
	return map[string]uint64{"forwarded": fwd, "drop_write_error": failed, "sharded": sharded}
}

// Open returns the forwarder's processor for a track.
func (f *Forwarder) Open(*room.Track, pipeline.Emit) (pipeline.Processor, error) {
	fp := &forwarderProc{f: f}
	f.mu.Lock()
	if f.live == nil {
		f.live = make(map[*forwarderProc]struct{})
	}
	f.live[fp] = struct{}{}
	f.mu.Unlock()
	return fp, nil
}

// Close stops the fan-out workers; slots belong to their peers.
func (f *Forwarder) Close(context.Context) error {
	if f.pool != nil {
		f.pool.close()
	}
	return nil
}

type forwarderProc struct {
	f     *Forwarder
	count counts

	// The parts of the current packet's fan-out given to the pool.
	shards     [maxShards]shard
	shardsDone sync.WaitGroup
}

func (fp *forwarderProc) HandlePacket(p *pipeline.Packet) bool {
	f := fp.f
	c := p.Conversation
	if c == nil {
		return true
	}
	t := p.Track
	now := p.Arrival.UnixNano()
	if !t.Video() {
		// Speakers are audio: a loud packet may win its publisher a slot.
		if p.Loud(f.settings.ThresholdDBov) && t.MarkActive(now, f.settings.Hangover.D()) {
			c.Reassign()
		} else if t.Waiting() && c.RetryDue(now, f.settings.Retry.D()) {
			c.Reassign()
		}
	}
	job := fanout{track: t, pkt: p, level: p.LevelByte(), now: now}
	slots := t.Targets(c)
	shards := 0
	if m := f.settings.ShardMin; m > 0 && f.pool != nil && len(slots) >= 2*m {
		parts := min(len(slots)/m, f.pool.workers+1)
		slots, shards = fp.shard(&job, slots, (len(slots)+parts-1)/parts)
	}
	written, failed, err := job.run(slots, t.SendBuffer())
	if shards > 0 {
		fp.count.sharded.Add(1)
		fp.shardsDone.Wait()
		for i := range shards {
			sh := &fp.shards[i]
			written += sh.written
			failed += sh.failed
			if err == nil {
				err = sh.err
			}
		}
	}
	if failed > 0 {
		fp.count.failed.Add(failed)
		if allow, n := f.errLog.Allow(p.Arrival); allow {
			f.log.Warn("forward failed", "track", t.ID, "err", err, "failed", failed, "suppressed", n)
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

// fanout is the writing of one packet to down-tracks.
type fanout struct {
	track *room.Track
	pkt   *pipeline.Packet
	level byte
	now   int64
}

// run writes the packet to downs through buf and sends what buf queued.
func (j *fanout) run(downs []*rtc.DownTrack, buf *rtc.SendBuffer) (written, failed uint64, err error) {
	return rtc.Fanout(downs, buf, j.track.UpTrack, &j.pkt.RTP, j.level, j.pkt.HasLevel, j.now)
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
	f.closed.sharded.Add(fp.count.sharded.Load())
}

// Relayed implements pipeline.Relayed: the forwarder also runs on tracks
// relayed from another router.
func (*Forwarder) Relayed() bool { return true }
