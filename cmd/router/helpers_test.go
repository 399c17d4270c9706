package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/pipeline"
)

// perms is a real backend-permissions stand-in: an HTTP server that allows
// the (user, conversation) pairs it was given.
type perms struct {
	srv *httptest.Server
	mu  sync.Mutex
	ok  map[string]bool
}

func newPerms(t *testing.T) *perms {
	p := &perms{ok: make(map[string]bool)}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var user, conv string
		if _, err := fmt.Sscanf(strings.ReplaceAll(r.URL.Path, "/", " "), " user %s conversation %s", &user, &conv); err != nil {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		p.mu.Lock()
		allowed := p.ok[user+"|"+conv]
		p.mu.Unlock()
		if strings.HasPrefix(conv, "broken") {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if !allowed {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *perms) allow(conv string, users ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range users {
		p.ok[u+"|"+conv] = true
	}
}

// testRouter is a running router with a NATS subscriber on its bites.
type testRouter struct {
	t     *testing.T
	a     *app
	perms *perms
	nc    *nats.Conn
}

// startRouter runs the router on loopback with the given settings over the
// test defaults, and stops it at the end of the test.
func startRouter(t *testing.T, env map[string]string) *testRouter {
	t.Helper()
	p := newPerms(t)
	vars := map[string]string{
		"LISTEN":           "127.0.0.1:0",
		"ICE_IPS":          "127.0.0.1",
		"PERMISSIONS_HOST": p.srv.URL,
		"CONNECT_TIMEOUT":  "10s",
		// A closed client is seen through ICE consent (pion v3 ignores
		// DTLS close_notify): keep that short in tests.
		"ICE_DISCONNECTED_TIMEOUT": "1s",
		"ICE_FAILED_TIMEOUT":       "1s",
		"ICE_KEEPALIVE":            "250ms",
	}
	for k, v := range env {
		vars[k] = v
	}
	a := startApp(t, vars, registry())
	nc, err := nats.Connect("", nats.InProcessServer(a.ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close) // before the app's shutdown
	return &testRouter{t: t, a: a, perms: p, nc: nc}
}

// startApp starts the router configured by vars, with the stages of reg,
// and shuts it down at the end of the test.
func startApp(t *testing.T, vars map[string]string, reg *pipeline.Registry) *app {
	t.Helper()
	cfg, err := loadConfig(func(k string) string { return vars[k] }, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(cfg, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return a
}

// testLogger logs to the test log until the test's cleanup.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// testWriter sends router logs to the test log. A signalling goroutine can
// log just after its test has ended (the HTTP server does not wait for
// hijacked WebSocket connections); testing forbids t.Log then, so writes
// after stop are dropped.
type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
}

func (r *testRouter) url(path string) string { return "http://" + r.a.addr() + path }
func (r *testRouter) wsURL() string          { return "ws://" + r.a.addr() + "/connect" }

// join POSTs /join/conv as user and returns the status code.
func (r *testRouter) join(user, conv string) int {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.url("/join/"+conv), nil)
	b, _ := json.Marshal(claim.Claim{UserID: user, ClientID: user + "-phone"})
	req.Header.Set(claim.Header, string(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// mustJoin allows and joins.
func (r *testRouter) mustJoin(user, conv string) {
	r.t.Helper()
	r.perms.allow(conv, user)
	if code := r.join(user, conv); code != http.StatusOK {
		r.t.Fatalf("join %s %s: %d", user, conv, code)
	}
}

// dial connects a client for user (client id user-phone unless given).
func (r *testRouter) dial(user string, o beepclient.Options) *beepclient.Client {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	o.URL = r.wsURL()
	if o.Claim.UserID == "" {
		o.Claim = claim.Claim{UserID: user, ClientID: user + "-phone"}
	}
	c, err := beepclient.Dial(ctx, o)
	if err != nil {
		r.t.Fatalf("dial %s: %v", user, err)
	}
	r.t.Cleanup(c.Close)
	// The client may see the connection up before the router does; until
	// the router does, the device receives nothing.
	p := r.a.rooms.Peer(o.Claim.UserID, o.Claim.ClientID)
	if p == nil {
		r.t.Fatalf("dial %s: the router has no peer for %s", user, o.Claim.ClientID)
	}
	select {
	case <-p.Connected():
	case <-ctx.Done():
		r.t.Fatalf("dial %s: the router never saw the peer connected", user)
	}
	return c
}

// bites subscribes to the bite subject.
func (r *testRouter) bites(subject string) <-chan *beeppb.Bite {
	ch := make(chan *beeppb.Bite, 256)
	sub, err := r.nc.Subscribe(subject, func(m *nats.Msg) {
		var b beeppb.Bite
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			r.t.Errorf("bad bite: %v", err)
			return
		}
		ch <- &b
	})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.nc.Flush(); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

// writePipeline writes a pipeline file and returns its path.
func writePipeline(t *testing.T, yaml string) string {
	path := filepath.Join(t.TempDir(), "pipeline.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// frame returns a 20 ms Opus packet that decodes to silence and carries
// speaker id and counter n after the frame, to tell senders apart.
func frame(id byte, n int) []byte {
	return []byte{0xf8, 0xff, 0xfe, id, byte(n >> 8), byte(n)}
}

// speaker and counter read back what frame wrote.
func speaker(p beepclient.Packet) byte { return p.Payload[3] }
func counter(p beepclient.Packet) int  { return int(p.Payload[4])<<8 | int(p.Payload[5]) }

// pace sends n packets from c at 20 ms intervals, starting at counter from,
// with the level given by level(i).
func pace(c *beepclient.Client, id byte, from, n int, level func(i int) int) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < n; i++ {
		if err := c.Send(frame(id, from+i), level(i)); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		<-tick.C
	}
	return nil
}

// paceAll runs pace for several clients at once.
func paceAll(t *testing.T, n int, level func(i int) int, clients map[byte]*beepclient.Client) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for id, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- pace(c, id, 0, n, level)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func loud(int) int  { return 10 }
func quiet(int) int { return 127 }

// deadline returns a context for waiting on an event.
func deadline(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
