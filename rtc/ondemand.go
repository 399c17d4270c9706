package rtc

import (
	"sync"

	"github.com/pion/interceptor"
)

// onDemand wraps the factory of an interceptor that only works for remote
// streams (pion's NACK generator and receiver reports) so that its RTCP loop
// starts with the peer's first remote stream instead of with the peer.
//
// Both of those interceptors start a ticking goroutine in BindRTCPWriter,
// which pion calls once per peer connection: the NACK generator wakes 10
// times a second, the receiver reports once. Most devices only listen and
// never have a remote stream, so for them the loop only burns CPU and
// memory. pion has no option for this, hence the wrapper.
//
// It relies on the wrapped interceptor's BindRTCPWriter returning the writer
// it was given (it keeps it for its loop and changes nothing), which holds
// for both.
type onDemand struct{ interceptor.Factory }

// NewInterceptor implements interceptor.Factory.
func (f onDemand) NewInterceptor(id string) (interceptor.Interceptor, error) {
	i, err := f.Factory.NewInterceptor(id)
	if err != nil {
		return nil, err
	}
	return &deferredLoop{Interceptor: i}, nil
}

// deferredLoop holds back BindRTCPWriter until the first BindRemoteStream.
type deferredLoop struct {
	interceptor.Interceptor

	mu     sync.Mutex
	writer interceptor.RTCPWriter // from BindRTCPWriter; nil once handed on
}

// BindRTCPWriter keeps w for the wrapped interceptor's loop.
func (d *deferredLoop) BindRTCPWriter(w interceptor.RTCPWriter) interceptor.RTCPWriter {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writer = w
	return w
}

// BindRemoteStream starts the wrapped interceptor's loop, once, and binds
// the stream.
func (d *deferredLoop) BindRemoteStream(info *interceptor.StreamInfo, r interceptor.RTPReader) interceptor.RTPReader {
	d.mu.Lock()
	if d.writer != nil {
		d.Interceptor.BindRTCPWriter(d.writer)
		d.writer = nil
	}
	d.mu.Unlock()
	return d.Interceptor.BindRemoteStream(info, r)
}
