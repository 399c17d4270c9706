package arbiter

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// TestMain fails the run if a goroutine (a socket, a peer, a watcher)
// outlives the tests, and removes the media fixtures.
func TestMain(m *testing.M) { testpeer.VerifyTestMain(m, removeFixtures) }

// waitLong bounds every wait of these tests: generous, for -race on a busy
// machine of two cores.
const waitLong = 20 * time.Second

// customer is the origin of the page that embeds Arbiter's client: not the
// router's.
const customer = "http://customer.example"

// deadline returns a context that ends after d or with the test.
func deadline(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testLog returns a logger whose output is shown if the test fails.
func testLog(t *testing.T) *slog.Logger {
	t.Helper()
	return testutil.Logger(t, slog.LevelInfo)
}

// newManager starts a Manager on the real default forwarding pipeline,
// ICE on 127.0.0.1 only. Cleanup closes it.
func newManager(t *testing.T, log *slog.Logger) *room.Manager {
	t.Helper()
	return testroom.NewManager(t, rtc.Config{}, log)
}

// startJetStream runs an embedded NATS server with JetStream, its store in
// dir ("" : a temporary one).
func startJetStream(t *testing.T, dir string) *testutil.NATS {
	t.Helper()
	return testutil.StartNATS(t, func(o *server.Options) {
		o.JetStream = true
		o.StoreDir = dir
	})
}

// router is a Server behind a real HTTP server.
type router struct {
	*Server
	http *httptest.Server
}

// newRouter starts a Server on nc with cfg (Rooms, NATS and Logger filled
// in when unset) behind an httptest server. Cleanup closes both.
func newRouter(t *testing.T, nc *nats.Conn, cfg Config) *router {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLog(t)
	}
	if cfg.Rooms == nil {
		cfg.Rooms = newManager(t, cfg.Logger)
	}
	cfg.NATS = nc
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	s.Register(r)
	h := httptest.NewServer(r)
	t.Cleanup(func() {
		s.Close()
		h.Close()
	})
	return &router{Server: s, http: h}
}

// answer is an HTTP answer of the room API.
type answer struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

// str returns the body's field k as a string ("" if it is not one).
func (a answer) str(k string) string {
	s, _ := a.body[k].(string)
	return s
}

// call makes one request to the room API, from the customer's origin.
func (r *router) call(t testing.TB, method, path, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, r.http.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", customer)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{code: resp.StatusCode, header: resp.Header, raw: string(b)}
	if len(bytes.TrimSpace(b)) > 0 {
		if err := json.Unmarshal(b, &a.body); err != nil {
			t.Errorf("%s %s: answer is not a JSON object: %q", method, path, b)
		}
	}
	return a
}

// createRoom makes a room and returns its id.
func (r *router) createRoom(t testing.TB) string {
	t.Helper()
	a := r.call(t, http.MethodPut, "/createRoom", "")
	if a.code != http.StatusOK || a.str("roomId") == "" {
		t.Fatalf("createRoom: %d %s", a.code, a.raw)
	}
	return a.str("roomId")
}

// claim claims a room for path and returns it.
func (r *router) claim(t testing.TB, path string) string {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"urlPath": path})
	a := r.call(t, http.MethodPatch, "/claimRoom", string(b))
	if a.code != http.StatusOK || a.str("roomId") == "" {
		t.Fatalf("claimRoom %q: %d %s", path, a.code, a.raw)
	}
	return a.str("roomId")
}

// slogTo returns a logger writing text to w.
func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
