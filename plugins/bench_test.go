package plugins

import (
	"context"
	"encoding/json"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins/protocol"
)

// BenchmarkPluginStage pushes packets through a pipeline whose plugin stage
// feeds a real plugin process that only measures, per packet, the delay from
// the router's arrival stamp to its handler. It reports delivered packets per
// second and that delay, with one message per packet and batched, flat out
// ("saturated": the producer waits only when the queue is full, so nothing
// is dropped) and paced by a 1 ms ticker ("paced": about 1,000 packets/s, 20 speakers' worth).
func BenchmarkPluginStage(b *testing.B) {
	cases := []struct {
		name  string
		batch int
		flush time.Duration
		paced bool
	}{
		{"per-packet/saturated", 1, 0, false},
		{"batch32/saturated", 32, 0, false},
		{"batch32-flush5ms/saturated", 32, 5 * time.Millisecond, false},
		{"per-packet/paced", 1, 0, true},
		{"batch32/paced", 32, 0, true},
		{"batch32-flush5ms/paced", 32, 5 * time.Millisecond, true},
	}
	bin := build(b, "internal/testplugin")
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			env := newEnv(b, map[string]string{"alice": "conv-1"})
			s := testSettings(bin, "-mode", "latency")
			s.Batch, s.Flush = bc.batch, pipeline.Duration(bc.flush)
			s.StallTimeout = pipeline.Duration(time.Minute)
			reports := make(chan *protocol.Result, 1)
			st, err := newStage(pipeline.Env{}, "bench", s, func(r *protocol.Result) {
				if r.Kind == "latency" {
					reports <- r
				}
			})
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = st.Close(context.Background()) }()
			sink := chain(b, st, env.track("alice", 1))
			raw := rtpPacket(b, 1, 960, 1, 30, make([]byte, 100))
			var tick *time.Ticker
			if bc.paced {
				tick = time.NewTicker(time.Millisecond)
				defer tick.Stop()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if tick != nil {
					<-tick.C
				} else {
					for len(st.q.free) == 0 {
						runtime.Gosched()
					}
				}
				if err := sink.WriteRTP(raw, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			sink.Close()
			var r *protocol.Result
			select {
			case r = <-reports:
			case <-time.After(time.Minute):
				b.Fatal("no latency report")
			}
			b.StopTimer()
			var lat struct {
				Packets int   `json:"packets"`
				SumNS   int64 `json:"sum_ns"`
				MaxNS   int64 `json:"max_ns"`
			}
			if err := json.Unmarshal(r.Data, &lat); err != nil {
				b.Fatal(err)
			}
			if lat.Packets != b.N {
				b.Fatalf("plugin saw %d of %d packets (stats %+v)", lat.Packets, b.N, st.Stats())
			}
			stats := st.Stats()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
			b.ReportMetric(float64(lat.SumNS)/float64(lat.Packets)/1e3, "µs-latency")
			b.ReportMetric(float64(lat.MaxNS)/1e3, "µs-max-latency")
			b.ReportMetric(float64(stats.Sent)/float64(max(stats.Batches, 1)), "pkts/msg")
		})
	}
}

// BenchmarkHandlePacket measures the per-packet path alone: the processor
// copying a packet into a pooled item and queueing it, with a consumer that
// recycles items. It must not allocate.
func BenchmarkHandlePacket(b *testing.B) {
	env := newEnv(b, map[string]string{"alice": "conv-1"})
	st := &Stage{s: DefaultSettings, log: slog.New(slog.DiscardHandler), q: newQueue(1024), streams: newStreams()}
	st.wantPackets.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for it := range st.q.full {
			st.q.release(it)
		}
	}()
	tr := env.track("alice", 1)
	proc, _ := st.Open(tr, nil)
	var p pipeline.Packet
	if err := p.RTP.Unmarshal(rtpPacket(b, 1, 960, 1, 30, make([]byte, 100))); err != nil {
		b.Fatal(err)
	}
	p.Raw = rtpPacket(b, 1, 960, 1, 30, make([]byte, 100))
	p.Track = tr
	p.Conversation = tr.Conversation()
	p.Arrival = time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		for len(st.q.free) == 0 {
			runtime.Gosched() // measure queueing, not dropping
		}
		proc.HandlePacket(&p)
	}
	b.StopTimer()
	proc.Close()
	close(st.q.full)
	<-done
	b.ReportMetric(float64(st.Stats().Dropped)/float64(b.N)*100, "%dropped")
}
