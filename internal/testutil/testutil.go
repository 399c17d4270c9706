// Package testutil holds what the router's tests share: waiting on a
// condition with a deadline (never a bare sleep), free loopback addresses,
// a log shown when a test fails, a lossy UDP relay, and an embedded NATS
// server.
package testutil

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// pollEvery is how often Until looks at its condition.
const pollEvery = 10 * time.Millisecond

// Until waits until cond holds, looking every 10 ms, or until ctx ends.
func Until(ctx context.Context, cond func() bool) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Eventually waits up to timeout for cond, failing t with what it waited
// for.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := Until(ctx, cond); err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// FreeAddr returns a loopback TCP address ("127.0.0.1:port") that was free
// a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreeUDPPort returns a loopback UDP port that was free a moment ago.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// Logger returns a text logger at level whose output is shown if tb
// fails. Its cleanup shows the output, so make it before what logs to it:
// it then runs after theirs.
func Logger(tb testing.TB, level slog.Level) *slog.Logger {
	tb.Helper()
	logs := &Buffer{}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("router log:\n%s", logs.String())
		}
	})
	return slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
}

// Buffer is a bytes.Buffer that a writer goroutine (a logger, a
// subprocess) and a test may use at once.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
