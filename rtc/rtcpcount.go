package rtc

import (
	"sync/atomic"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
)

// nackCounter is an interceptor that counts the NACKs the router sends to
// publishers (written by pion's NACK generator, which sits after it in the
// chain and so writes through it).
type nackCounter struct {
	interceptor.NoOp
	sent *atomic.Uint64
}

// BindRTCPWriter counts outgoing NACKs.
func (c *nackCounter) BindRTCPWriter(w interceptor.RTCPWriter) interceptor.RTCPWriter {
	return interceptor.RTCPWriterFunc(func(pkts []rtcp.Packet, a interceptor.Attributes) (int, error) {
		for _, p := range pkts {
			if _, ok := p.(*rtcp.TransportLayerNack); ok {
				c.sent.Add(1)
			}
		}
		return w.Write(pkts, a)
	})
}

// nackCounterFactory builds a nackCounter per peer connection.
type nackCounterFactory struct{ sent *atomic.Uint64 }

func (f nackCounterFactory) NewInterceptor(string) (interceptor.Interceptor, error) {
	return &nackCounter{sent: f.sent}, nil
}
