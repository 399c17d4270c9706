package devices

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger logs to stderr with -v, and nowhere otherwise.
func testLogger() *slog.Logger {
	if testing.Verbose() && os.Getenv("DEVICES_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startNATS runs an embedded NATS server on a random loopback port.
func startNATS(t *testing.T, tune ...func(*server.Options)) string {
	t.Helper()
	return testutil.StartNATS(t, tune...).URL()
}

// instance is one Service behind a real HTTP server.
type instance struct {
	svc    *Service
	srv    *httptest.Server
	client *http.Client
}

func newInstance(t *testing.T, cfg Config) *instance {
	t.Helper()
	return newInstanceBuffers(t, cfg, 0)
}

// newInstanceBuffers is newInstance with the server's socket send buffers
// and the client's socket receive buffers set to sockBuf bytes when it is
// not 0, so that a client that does not read blocks the server soon.
func newInstanceBuffers(t *testing.T, cfg Config, sockBuf int) *instance {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	if cfg.Claims == nil {
		cfg.Claims = claim.FromHeader
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = time.Minute // keep-alives tested on their own
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	svc.Register(r)
	srv := httptest.NewUnstartedServer(r)
	tr := &http.Transport{}
	if sockBuf > 0 {
		srv.Listener = smallBufListener{srv.Listener, sockBuf}
		d := &net.Dialer{}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(sockBuf)
			}
			return c, err
		}
	}
	srv.Start()
	client := &http.Client{Transport: tr}
	// Cleanups run last-registered first: service, then server, then client.
	t.Cleanup(client.CloseIdleConnections)
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		if err := svc.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &instance{svc: svc, srv: srv, client: client}
}

type smallBufListener struct {
	net.Listener
	size int
}

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(l.size)
	}
	return c, err
}

func claimHeader(user, device string) string {
	b, _ := json.Marshal(claim.Claim{UserID: user, ClientID: device})
	return string(b)
}

// post posts body to /user/{user}/device/{device} as sender and returns the
// status code.
func (in *instance) post(t *testing.T, sender claim.Claim, user, device, body string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, in.srv.URL+"/user/"+user+"/device/"+device, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if sender.UserID != "" {
		req.Header.Set(claim.Header, claimHeader(sender.UserID, sender.ClientID))
	}
	resp, err := in.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func postBodyJSON(data, event string) string {
	m := map[string]string{"data": data}
	if event != "" {
		m["event"] = event
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// devices GETs /user/{user}/devices and returns the status and raw body.
func (in *instance) devices(t *testing.T, user string, asClaim bool) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, in.srv.URL+"/user/"+user+"/devices", nil)
	if asClaim {
		req.Header.Set(claim.Header, claimHeader("u-lister", "d-lister"))
	}
	resp, err := in.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (in *instance) deviceList(t *testing.T, user string) []string {
	t.Helper()
	code, body := in.devices(t, user, true)
	if code != http.StatusOK {
		t.Fatalf("devices: %d %s", code, body)
	}
	var l []string
	if err := json.Unmarshal([]byte(body), &l); err != nil {
		t.Fatalf("devices body %q: %v", body, err)
	}
	return l
}

func sameList(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// sseItem is one comment or one event read from a stream.
type sseItem struct {
	comment string   // set for a comment line
	lines   []string // the raw lines of an event, without the blank line
	id      string
	event   string
	data    []string
}

// sseConn reads an SSE stream line by line in a goroutine.
type sseConn struct {
	resp  *http.Response
	items chan sseItem
	stop  chan struct{}
	done  chan struct{} // closed when the stream ended
}

// openStream GETs path with the claim of user/device; it returns the
// response when the status is not 200 (body closed), or the stream.
func (in *instance) openStream(t *testing.T, path, user, device string) (*sseConn, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, in.srv.URL+path, nil)
	if user != "" {
		req.Header.Set(claim.Header, claimHeader(user, device))
	}
	resp, err := in.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, resp.StatusCode
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	c := &sseConn{resp: resp, items: make(chan sseItem, 256), stop: make(chan struct{}), done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c, resp.StatusCode
}

func (in *instance) subscribe(t *testing.T, user, device string) *sseConn {
	t.Helper()
	c, code := in.openStream(t, "/subscribe", user, device)
	if code != http.StatusOK {
		t.Fatalf("subscribe %s/%s: %d", user, device, code)
	}
	return c
}

func (c *sseConn) read() {
	defer close(c.done)
	sc := bufio.NewScanner(c.resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var cur sseItem
	emit := func(it sseItem) bool {
		select {
		case c.items <- it:
			return true
		case <-c.stop:
			return false
		}
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(cur.lines) > 0 && !emit(cur) {
				return
			}
			cur = sseItem{}
		case strings.HasPrefix(line, ":"):
			if !emit(sseItem{comment: line}) {
				return
			}
		default:
			cur.lines = append(cur.lines, line)
			field, value, _ := strings.Cut(line, ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "id":
				cur.id = value
			case "event":
				cur.event = value
			case "data":
				cur.data = append(cur.data, value)
			}
		}
	}
}

func (c *sseConn) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.resp.Body.Close()
	<-c.done
}

// nextEvent returns the next event, skipping comments.
func (c *sseConn) nextEvent(t *testing.T) sseItem {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case it := <-c.items:
			if it.comment == "" {
				return it
			}
		case <-c.done:
			select {
			case it := <-c.items:
				if it.comment == "" {
					return it
				}
				continue
			default:
			}
			t.Fatal("stream ended while waiting for an event")
		case <-timeout:
			t.Fatal("timed out waiting for an event")
		}
	}
}

// waitEnded waits until the server ended the stream, discarding what is
// left to read.
func (c *sseConn) waitEnded(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case <-c.items:
		case <-c.done:
			return
		case <-deadline:
			t.Fatalf("stream did not end within %v", timeout)
		}
	}
}
