// Package sse writes Server-Sent Events responses: the headers, and writes
// that are flushed at once, each within its own deadline, and interrupted
// when the stream's context ends (a client that stopped reading cannot hold
// a handler).
package sse

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Stream is one open SSE response.
type Stream struct {
	w           http.ResponseWriter
	rc          *http.ResponseController
	ctx         context.Context
	timeout     time.Duration
	stop        func() bool
	interrupted chan struct{}
}

// Open sends the SSE response headers (200, text/event-stream, no caching
// or proxy buffering). Each Write must finish within timeout; when ctx ends,
// a Write in progress fails at once. Call Close when the stream ends.
func Open(ctx context.Context, w http.ResponseWriter, timeout time.Duration) *Stream {
	s := &Stream{w: w, rc: http.NewResponseController(w), ctx: ctx, timeout: timeout, interrupted: make(chan struct{})}
	s.stop = context.AfterFunc(ctx, func() {
		defer close(s.interrupted)
		_ = s.rc.SetWriteDeadline(time.Now())
	})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return s
}

// Write sends b and flushes it. It fails with http.ErrNotSupported when the
// response cannot be flushed (a buffering middleware in front).
func (s *Stream) Write(b []byte) error {
	if err := s.rc.SetWriteDeadline(time.Now().Add(s.timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	if s.ctx.Err() != nil { // the deadline above may have undone the interrupt
		return context.Cause(s.ctx)
	}
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}

// Close releases the stream's interrupter, waiting for it if it is running.
func (s *Stream) Close() {
	if !s.stop() {
		<-s.interrupted
	}
}
