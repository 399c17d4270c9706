package main

import (
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
)

// hangProxy forwards TCP between clients and a server on loopback, and can
// freeze: it stops forwarding bytes (holding what it has read) while
// keeping every connection open, which is what a client sees of a hung peer
// (a NATS server stopped with SIGSTOP: the kernel still accepts the bytes,
// nothing answers).
type hangProxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
	closed bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newHangProxy(t *testing.T, target string) *hangProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangProxy{ln: ln, target: target}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *hangProxy) addr() string { return p.ln.Addr().String() }

func (p *hangProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		p.conns = append(p.conns, c, s)
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(s, c)
		go p.pipe(c, s)
	}
}

// pipe copies src to dst, holding each chunk while the proxy is frozen.
func (p *hangProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.pass() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass waits while frozen; false once closed.
func (p *hangProxy) pass() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.frozen && !p.closed {
		p.cond.Wait()
	}
	return !p.closed
}

func (p *hangProxy) freeze(on bool) {
	p.mu.Lock()
	p.frozen = on
	p.mu.Unlock()
	p.cond.Broadcast()
}

func (p *hangProxy) close() {
	p.mu.Lock()
	p.closed = true
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	p.cond.Broadcast()
	p.ln.Close()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}

// TestReadyzNATSHung: a NATS server that keeps its connection open but
// answers nothing makes /readyz 503 within a few seconds (readiness is a
// recent round trip, not the connection's state), and 200 again when it
// answers; /healthz (liveness) stays 200 throughout.
func TestReadyzNATSHung(t *testing.T) {
	ns := testutil.StartNATS(t)
	px := newHangProxy(t, ns.Server().Addr().String())
	a := startExternal(t, "nats://"+px.addr())
	// Before the router's shutdown: a router whose NATS is frozen would
	// wait on it.
	t.Cleanup(px.close)

	status := func(path string) int {
		resp, err := http.Get("http://" + a.addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	// waitReady polls /readyz until it answers want, checking /healthz on
	// the way.
	waitReady := func(want int, within time.Duration, what string) {
		t.Helper()
		if err := testutil.Until(deadline(t, within), func() bool {
			if code := status("/healthz"); code != http.StatusOK {
				t.Fatalf("/healthz %d %s", code, what)
			}
			return status("/readyz") == want
		}); err != nil {
			t.Fatalf("/readyz is not %d %s", want, what)
		}
	}

	waitReady(http.StatusOK, 5*time.Second, "while the proxy forwards")
	px.freeze(true)
	frozen := time.Now()
	waitReady(http.StatusServiceUnavailable, 8*time.Second, "after NATS hung")
	t.Logf("/readyz 503 %v after NATS hung", time.Since(frozen).Round(time.Millisecond))
	if code := status("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz %d while NATS hangs", code)
	}
	px.freeze(false)
	waitReady(http.StatusOK, 8*time.Second, "after NATS answered again")
}
