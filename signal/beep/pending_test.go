package beep

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// fakeAddrHeader lets the test play several client addresses over
// 127.0.0.1: a middleware of the test (not the Server) sets r.RemoteAddr
// from it.
const fakeAddrHeader = "X-Test-Remote-Addr"

type connectEnv struct {
	srv    *Server
	url    string
	mu     sync.Mutex
	opened []*websocket.Conn
}

func newConnectEnv(t *testing.T, cfg Config) *connectEnv {
	t.Helper()
	rooms, err := room.New(room.Config{Sink: nopSink{}, Media: rtc.Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Rooms = rooms
	cfg.Logger = slog.New(slog.DiscardHandler)
	s := New(cfg)
	r := mux.NewRouter()
	s.Register(r)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if a := req.Header.Get(fakeAddrHeader); a != "" {
			req.RemoteAddr = a
		}
		r.ServeHTTP(w, req)
	}))
	env := &connectEnv{srv: s, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/connect"}
	t.Cleanup(func() {
		env.mu.Lock()
		for _, c := range env.opened {
			_ = c.Close()
		}
		env.mu.Unlock()
		hs.Close()
		_ = rooms.Close(context.Background())
	})
	return env
}

// dial opens /connect as a client at addr; it returns the socket, or nil
// and the refusal's status.
func (e *connectEnv) dial(t *testing.T, addr string) (*websocket.Conn, *http.Response) {
	t.Helper()
	h := http.Header{}
	h.Set(claim.Header, `{"userid":"u","clientid":"c"}`)
	h.Set(fakeAddrHeader, addr)
	c, resp, err := websocket.DefaultDialer.Dial(e.url, h)
	if err != nil {
		if !errors.Is(err, websocket.ErrBadHandshake) || resp == nil {
			t.Fatalf("dial as %s: %v", addr, err)
		}
		return nil, resp
	}
	e.mu.Lock()
	e.opened = append(e.opened, c)
	e.mu.Unlock()
	return c, resp
}

func (e *connectEnv) mustOpen(t *testing.T, addr string) *websocket.Conn {
	t.Helper()
	c, resp := e.dial(t, addr)
	if c == nil {
		t.Fatalf("connect as %s refused: %d", addr, resp.StatusCode)
	}
	return c
}

func (e *connectEnv) mustRefuse(t *testing.T, addr string, code int) {
	t.Helper()
	c, resp := e.dial(t, addr)
	if c != nil {
		t.Fatalf("connect as %s upgraded, want %d before the upgrade", addr, code)
	}
	if resp.StatusCode != code || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("connect as %s: %d Retry-After %q, want %d with Retry-After", addr, resp.StatusCode, resp.Header.Get("Retry-After"), code)
	}
}

func (e *connectEnv) waitPending(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, "pending sockets to settle", func() bool {
		return e.srv.ConnectStats().Pending == n
	})
}

// waitGoroutines waits until at most max goroutines run.
func waitGoroutines(t *testing.T, max int, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > max {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d goroutines, want at most %d", what, runtime.NumGoroutine(), max)
		}
		runtime.Gosched()
	}
}

// TestConnectPendingBounds opens idle /connect sockets (upgraded, no
// offer) up to the bounds per address (3) and in total (5): the next is
// refused before the upgrade, 429 per address and 503 in total, with
// Retry-After; a socket that sends an offer (here a refused bad one) or
// closes frees its place; an idle socket costs at most one goroutine, and
// refused attempts cost none that stays.
func TestConnectPendingBounds(t *testing.T) {
	e := newConnectEnv(t, Config{MaxPendingPerAddr: 3, MaxPending: 5, OfferTimeout: time.Minute})
	const a, b, c = "10.0.0.1:1000", "10.0.0.2:1000", "10.0.0.3:1000"

	base := runtime.NumGoroutine()
	var as []*websocket.Conn
	for range 3 {
		as = append(as, e.mustOpen(t, a))
	}
	e.mustRefuse(t, "10.0.0.1:2000", http.StatusTooManyRequests) // same IP, other port
	b1 := e.mustOpen(t, b)
	e.mustOpen(t, b)
	e.waitPending(t, 5)
	e.mustRefuse(t, c, http.StatusServiceUnavailable)
	// 5 idle sockets: the server's connection goroutine each, no reader.
	waitGoroutines(t, base+5+2, "5 idle sockets")

	// 50 more attempts are all refused and leave nothing running.
	peak := 0
	for i := range 50 {
		if i%2 == 0 {
			e.mustRefuse(t, a, http.StatusServiceUnavailable) // total checked first
		} else {
			e.mustRefuse(t, c, http.StatusServiceUnavailable)
		}
		peak = max(peak, runtime.NumGoroutine())
	}
	if peak > base+5+30 {
		t.Fatalf("%d goroutines while refusing, base %d", peak, base)
	}
	waitGoroutines(t, base+5+2, "after 50 refusals")
	st := e.srv.ConnectStats()
	if st.Pending != 5 || st.RefusedPerAddr != 1 || st.RefusedTotal != 51 {
		t.Fatalf("stats %+v, want 5 pending, 1 refused per address, 51 in total", st)
	}

	// An offer, even a refused one, frees the place.
	if err := as[0].WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, _, err := as[0].ReadMessage()
	if ce := (*websocket.CloseError)(nil); !errors.As(err, &ce) || ce.Code != websocket.CloseUnsupportedData {
		t.Fatalf("bad offer: %v, want close 1003", err)
	}
	e.waitPending(t, 4)
	e.mustOpen(t, a)
	e.mustRefuse(t, a, http.StatusServiceUnavailable)

	// A socket that closes frees its place.
	_ = b1.Close()
	e.waitPending(t, 4)
	e.mustOpen(t, c)
	e.waitPending(t, 5)
}

// TestConnectPendingOfferTimeout: a socket silent past OfferTimeout is
// closed with 1008 and leaves the count.
func TestConnectPendingOfferTimeout(t *testing.T) {
	e := newConnectEnv(t, Config{MaxPendingPerAddr: 1, OfferTimeout: 100 * time.Millisecond})
	c := e.mustOpen(t, "10.0.0.1:1")
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := c.ReadMessage()
	if ce := (*websocket.CloseError)(nil); !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("silent socket: %v, want close 1008 no offer in time", err)
	}
	e.waitPending(t, 0)
	e.mustOpen(t, "10.0.0.1:1")
}

func TestPendingDefaultsAndAddr(t *testing.T) {
	s := New(Config{})
	if s.pending.perAddr != DefaultMaxPendingPerAddr || s.pending.total != DefaultMaxPending {
		t.Fatalf("defaults %d/%d", s.pending.perAddr, s.pending.total)
	}
	if s = New(Config{MaxPendingPerAddr: -1, MaxPending: -1}); s.pending.perAddr != 0 || s.pending.total != 0 {
		t.Fatalf("negative bounds %d/%d, want 0 (none)", s.pending.perAddr, s.pending.total)
	}
	for in, want := range map[string]string{"1.2.3.4:5": "1.2.3.4", "[::1]:80": "::1", "weird": "weird"} {
		if got := clientAddr(in); got != want {
			t.Fatalf("clientAddr(%q) = %q, want %q", in, got, want)
		}
	}
	p := newPending(1, 0)
	rel, err := p.acquire("x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.acquire("x"); !errors.Is(err, errPendingPerAddr) {
		t.Fatalf("second place for x: %v", err)
	}
	rel()
	rel() // idempotent
	if p.count() != 0 || len(p.byAddr) != 0 {
		t.Fatalf("after release: %d, %v", p.count(), p.byAddr)
	}
}
