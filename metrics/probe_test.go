package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// until polls cond every millisecond until it holds or d passes.
func until(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestProbe: /readyz answers from the probe's last result at once, follows
// the check's failures and recoveries, and however many requests arrive,
// checks run one at a time, on the probe's schedule only.
func TestProbe(t *testing.T) {
	var (
		fail    atomic.Bool
		checks  atomic.Int64
		running atomic.Int64
		overlap atomic.Bool
	)
	p := StartProbe(func() error {
		if running.Add(1) > 1 {
			overlap.Store(true)
		}
		defer running.Add(-1)
		checks.Add(1)
		if fail.Load() {
			return errors.New("peer hung")
		}
		return nil
	}, 20*time.Millisecond)
	defer p.Stop()
	if checks.Load() != 1 {
		t.Fatalf("StartProbe ran %d checks before returning, want 1", checks.Load())
	}
	srv := httptest.NewServer(Handler(prometheus.NewRegistry(), p.Err))
	defer srv.Close()
	code := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := code("/readyz"); c != http.StatusOK {
		t.Fatalf("/readyz %d, want 200", c)
	}

	fail.Store(true)
	until(t, 5*time.Second, "/readyz 503", func() bool { return code("/readyz") == http.StatusServiceUnavailable })
	if c := code("/healthz"); c != http.StatusOK {
		t.Fatalf("/healthz %d while the check fails", c)
	}

	// A storm of /readyz requests runs no check of its own.
	before := checks.Load()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				_ = p.Err()
			}
		}()
	}
	wg.Wait()
	if n := checks.Load() - before; n > 50 { // 400 requests; the schedule allows a few checks meanwhile
		t.Errorf("%d checks during 400 readiness requests", n)
	}

	fail.Store(false)
	until(t, 5*time.Second, "/readyz 200 again", func() bool { return code("/readyz") == http.StatusOK })
	if overlap.Load() {
		t.Error("two checks ran at once")
	}
}

// TestProbeStale: a check that hangs past its deadline (it should not)
// still makes the probe report not ready.
func TestProbeStale(t *testing.T) {
	release := make(chan struct{})
	var n atomic.Int64
	p := StartProbe(func() error {
		if n.Add(1) > 1 {
			<-release
		}
		return nil
	}, 10*time.Millisecond)
	if err := p.Err(); err != nil {
		t.Fatalf("after a successful check: %v", err)
	}
	until(t, 5*time.Second, "a stale probe to report an error", func() bool { return p.Err() != nil })
	t.Log(p.Err())
	close(release)
	p.Stop()
}
