package rtc

import (
	"sync/atomic"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
)

// rtcpCounter is an interceptor that counts the feedback the router sends
// to publishers: NACKs (written by pion's NACK generator) and transport-wide
// congestion control feedback (written by pion's TWCC interceptor). Both sit
// after it in the chain, and so write through it.
type rtcpCounter struct {
	interceptor.NoOp
	nacks, twcc *atomic.Uint64
}

// BindRTCPWriter counts outgoing NACKs and TWCC feedback.
func (c *rtcpCounter) BindRTCPWriter(w interceptor.RTCPWriter) interceptor.RTCPWriter {
	return interceptor.RTCPWriterFunc(func(pkts []rtcp.Packet, a interceptor.Attributes) (int, error) {
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.TransportLayerNack:
				c.nacks.Add(1)
			case *rtcp.TransportLayerCC:
				c.twcc.Add(1)
			}
		}
		return w.Write(pkts, a)
	})
}

// rtcpCounterFactory builds an rtcpCounter per peer connection.
type rtcpCounterFactory struct{ nacks, twcc *atomic.Uint64 }

func (f rtcpCounterFactory) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &rtcpCounter{nacks: f.nacks, twcc: f.twcc}, nil
}
