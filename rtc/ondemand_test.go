package rtc

import (
	"bytes"
	"runtime"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
)

// goroutinesBy counts the live goroutines that function fn started. (The
// started function's own frame is no good: a goroutine that has not run yet
// shows a compiler-made wrapper instead.)
func goroutinesBy(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte(fn+" in goroutine"))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestOnDemandStartsLoopWithFirstRemoteStream uses pion's own NACK
// generator and receiver-report interceptors: no loop goroutine for a peer
// without remote streams; with the first one, the loop runs and writes its
// RTCP through the writer bound at the start; Close ends it.
func TestOnDemandStartsLoopWithFirstRemoteStream(t *testing.T) {
	gen, err := nack.NewGeneratorInterceptor(nack.GeneratorInterval(5 * time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rr, err := report.NewReceiverInterceptor(report.ReceiverInterval(5 * time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		factory interceptor.Factory
		starter string // starts the loop goroutine
		want    func(rtcp.Packet) bool
	}{
		{"nack generator", gen, "nack.(*GeneratorInterceptor).BindRTCPWriter", func(p rtcp.Packet) bool {
			n, ok := p.(*rtcp.TransportLayerNack)
			return ok && n.MediaSSRC == 42 && len(n.Nacks) == 1 && n.Nacks[0].PacketID == 3
		}},
		{"receiver reports", rr, "report.(*ReceiverInterceptor).BindRTCPWriter", func(p rtcp.Packet) bool {
			r, ok := p.(*rtcp.ReceiverReport)
			return ok && len(r.Reports) == 1 && r.Reports[0].SSRC == 42
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := goroutinesBy(tt.starter)
			i, err := onDemand{tt.factory}.NewInterceptor("")
			if err != nil {
				t.Fatal(err)
			}
			written := make(chan rtcp.Packet, 64)
			i.BindRTCPWriter(interceptor.RTCPWriterFunc(func(pkts []rtcp.Packet, _ interceptor.Attributes) (int, error) {
				for _, p := range pkts {
					select {
					case written <- p:
					default:
					}
				}
				return 0, nil
			}))
			if n := goroutinesBy(tt.starter); n != base {
				t.Fatalf("%d loops before any remote stream, want %d", n, base)
			}

			// A remote stream with packets 1, 2, 4, 5: 3 is missing.
			var pkts [][]byte
			for _, seq := range []uint16{1, 2, 4, 5} {
				b, _ := (&rtp.Packet{Header: rtp.Header{Version: 2, SSRC: 42, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: []byte{0xf8}}).Marshal()
				pkts = append(pkts, b)
			}
			info := &interceptor.StreamInfo{SSRC: 42, ClockRate: 48000, RTCPFeedback: []interceptor.RTCPFeedback{{Type: "nack"}}}
			r := i.BindRemoteStream(info, interceptor.RTPReaderFunc(func(b []byte, a interceptor.Attributes) (int, interceptor.Attributes, error) {
				p := pkts[0]
				pkts = pkts[1:]
				return copy(b, p), a, nil
			}))
			if n := goroutinesBy(tt.starter); n != base+1 {
				t.Fatalf("%d loops after the first remote stream, want %d", n, base+1)
			}
			buf := make([]byte, 1500)
			for range 4 {
				if _, _, err := r.Read(buf, nil); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.After(5 * time.Second)
			for found := false; !found; {
				select {
				case p := <-written:
					found = tt.want(p)
				case <-deadline:
					t.Fatal("the loop wrote nothing expected through the writer bound at the start")
				}
			}

			// A second stream starts no second loop.
			i.BindRemoteStream(&interceptor.StreamInfo{SSRC: 43, ClockRate: 48000}, r)
			if n := goroutinesBy(tt.starter); n != base+1 {
				t.Fatalf("%d loops after a second remote stream, want %d", n, base+1)
			}
			if err := i.Close(); err != nil {
				t.Fatal(err)
			}
			if n := goroutinesBy(tt.starter); n != base {
				t.Fatalf("%d loops after Close, want %d", n, base)
			}
		})
	}
}

// TestOnDemandCloseWithoutStreams: a peer that never had a remote stream
// closes without ever starting the loop.
func TestOnDemandCloseWithoutStreams(t *testing.T) {
	gen, err := nack.NewGeneratorInterceptor()
	if err != nil {
		t.Fatal(err)
	}
	base := goroutinesBy("nack.(*GeneratorInterceptor).BindRTCPWriter")
	i, err := onDemand{gen}.NewInterceptor("")
	if err != nil {
		t.Fatal(err)
	}
	i.BindRTCPWriter(interceptor.RTCPWriterFunc(func([]rtcp.Packet, interceptor.Attributes) (int, error) { return 0, nil }))
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	i.BindRemoteStream(&interceptor.StreamInfo{SSRC: 1}, nil) // a late stream after Close starts nothing
	if n := goroutinesBy("nack.(*GeneratorInterceptor).BindRTCPWriter"); n != base {
		t.Fatalf("%d loops, want %d", n, base)
	}
}
