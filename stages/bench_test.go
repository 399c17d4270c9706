package stages

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/rtp"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
)

// rawPackets returns n marshalled 20 ms Opus packets with an audio level.
func rawPackets(b *testing.B, n int, level byte) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: uint32(i * 960), SSRC: 42}, Payload: make([]byte, 80)}
		p.Payload[0] = 0xf8
		_ = p.SetExtension(1, []byte{level})
		raw, err := p.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = raw
	}
	return out
}

func benchNATS(b *testing.B) *nats.Conn {
	nc, err := nats.Connect(testutil.StartNATS(b).URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return nc
}

// BenchmarkPipeline runs packets of one publisher through the default
// pipeline (gate, forwarder with no receivers, chunker, NATS sink on a real
// server). Speech cuts a 5 s bite every 250 packets; silence cuts none.
func BenchmarkPipeline(b *testing.B) {
	for _, bc := range []struct {
		name  string
		level byte
	}{{"silence", 127}, {"speech", 10}} {
		b.Run(bc.name, func(b *testing.B) {
			_, track := env(b)
			reg := pipeline.NewRegistry()
			Register(reg)
			cfg, err := reg.Config(Default...)
			if err != nil {
				b.Fatal(err)
			}
			p, err := reg.Build(cfg, pipeline.Env{NATS: benchNATS(b)})
			if err != nil {
				b.Fatal(err)
			}
			sink, err := p.Open(track)
			if err != nil {
				b.Fatal(err)
			}
			pkts := rawPackets(b, 4096, bc.level)
			at := time.Now()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				raw := pkts[i%len(pkts)]
				if i%len(pkts) == 0 && i > 0 {
					// Timestamps wrap back: start a fresh run of packets.
					sink.Close()
					sink, _ = p.Open(track)
				}
				at = at.Add(20 * time.Millisecond)
				if err := sink.WriteRTP(raw, at); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			sink.Close()
			_ = p.Close(context.Background())
		})
	}
}

// BenchmarkChunkerOgg measures cutting and muxing: 250 speech packets per
// 5 s bite.
func BenchmarkChunkerOgg(b *testing.B) {
	_, track := env(b)
	ch, _ := NewChunker(*chunkerKind.Defaults().(*ChunkerSettings), nil)
	p := pipeline.New(map[string]pipeline.Stage{"gate": &Gate{}, "chunker": ch}, "gate", "chunker")
	sink, _ := p.Open(track)
	pkts := rawPackets(b, 250, 10)
	at := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, raw := range pkts {
			at = at.Add(20 * time.Millisecond)
			_ = sink.WriteRTP(raw, at)
		}
		sink.Close() // emits the bite
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(pkts)), "ns/packet")
}
