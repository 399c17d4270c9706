package sylk_test

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/signal/sylk"
)

// TestMain fails the run if a goroutine (a socket, a peer, a client)
// outlives the tests, and removes the media fixtures.
func TestMain(m *testing.M) { testpeer.VerifyTestMain(m) }

// waitLong bounds every wait: generous, for -race on a busy machine.
const waitLong = 20 * time.Second

// ha1 is an account's HA1 as sylkrtc.js computes it.
func ha1(aor, password string) string {
	user, domain, _ := strings.Cut(aor, "@")
	sum := md5.Sum([]byte(user + ":" + domain + ":" + password))
	return hex.EncodeToString(sum[:])
}

// The local accounts of the tests: each one's password is "pw-" + user.
var testAccounts = []string{"alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"}

// password returns the test password of aor.
func password(aor string) string { return "pw-" + strings.SplitN(aor, "@", 2)[0] }

// writeAccounts writes an accounts file of accounts and returns its path.
func writeAccounts(t *testing.T, accounts []string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("# test accounts\n\n")
	for _, a := range accounts {
		fmt.Fprintf(&b, "%s:%s\n", a, ha1(a, password(a)))
	}
	path := filepath.Join(t.TempDir(), "accounts")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// env is a router's sylk front-end on a real room Manager (the default
// forwarding pipeline: permission gate, forwarder), ICE on 127.0.0.1.
type env struct {
	srv   *sylk.Server
	rooms *room.Manager
	url   string
}

// newEnv starts an env; tune may change the sylk Config (its Logger is
// set; Rooms, if tune leaves it nil, is a Manager of its own). AccountsFile defaults to the test accounts; set it to
// "-" for none. Cleanup closes everything in order.
func newEnv(t *testing.T, tune func(*sylk.Config)) *env {
	t.Helper()
	log := testutil.Logger(t, slog.LevelDebug) // shown last, if the test fails
	cfg := sylk.Config{Permissions: permissions.AllowAll{}, Logger: log, AccountsFile: writeAccounts(t, testAccounts)}
	if tune != nil {
		tune(&cfg)
	}
	if cfg.Rooms == nil {
		cfg.Rooms = testroom.NewManager(t, rtc.Config{}, log)
	}
	m := cfg.Rooms
	if cfg.AccountsFile == "-" {
		cfg.AccountsFile = ""
	}
	srv, err := sylk.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	srv.Register(r)
	hs := httptest.NewServer(r)
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
	})
	return &env{srv: srv, rooms: m, url: "ws" + strings.TrimPrefix(hs.URL, "http") + sylk.Path}
}

// msg is one message the client received.
type msg map[string]any

func (m msg) str(k string) string { s, _ := m[k].(string); return s }

// client is a WebSocket client of the API, like sylkrtc.js's Connection:
// it sends requests with fresh transactions and keeps what it receives,
// replies and events, for the test to wait on.
type client struct {
	t    *testing.T
	ws   *websocket.Conn
	wmu  sync.Mutex
	next int

	mu     sync.Mutex
	got    []msg
	used   []bool
	closed error // why the reader ended
	notify chan struct{}
	done   chan struct{}
}

// dial connects a client speaking protocol and waits for its ready event.
func (e *env) dial(t *testing.T, protocol string) *client {
	t.Helper()
	c := e.dialRaw(t, protocol)
	ready := func(m msg) bool { return m.str("sylkrtc") == "ready-event" }
	if protocol == sylk.ProtocolV1 {
		ready = func(m msg) bool { return m.str("sylkrtc") == "event" && m.str("event") == "ready" }
	}
	c.wait(ready, "ready")
	return c
}

// dialRaw connects a client without waiting for anything.
func (e *env) dialRaw(t *testing.T, protocol string) *client {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol}, HandshakeTimeout: waitLong}
	ws, resp, err := d.Dial(e.url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", protocol, err)
	}
	resp.Body.Close()
	if got := ws.Subprotocol(); got != protocol {
		t.Fatalf("subprotocol %q, want %q", got, protocol)
	}
	c := &client{t: t, ws: ws, notify: make(chan struct{}, 1), done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *client) read() {
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.closed = err
			c.mu.Unlock()
			c.wake()
			return
		}
		var m msg
		if err := json.Unmarshal(data, &m); err != nil {
			m = msg{"invalid": string(data)}
		}
		c.mu.Lock()
		c.got = append(c.got, m)
		c.used = append(c.used, false)
		c.mu.Unlock()
		c.wake()
	}
}

func (c *client) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *client) close() {
	_ = c.ws.Close()
	<-c.done
}

// send writes one message.
func (c *client) send(m map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(b)
}

func (c *client) sendRaw(b []byte) {
	c.t.Helper()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(waitLong))
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// tx returns a fresh transaction id.
func (c *client) tx() string {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.next++
	return fmt.Sprintf("tx-%d", c.next)
}

// request sends a request of type typ with fields and returns its reply,
// ack or error.
func (c *client) request(typ string, fields map[string]any) msg {
	c.t.Helper()
	tx := c.tx()
	m := map[string]any{"sylkrtc": typ, "transaction": tx}
	for k, v := range fields {
		m[k] = v
	}
	c.send(m)
	return c.reply(tx)
}

// reply waits for the reply of transaction tx.
func (c *client) reply(tx string) msg {
	c.t.Helper()
	return c.wait(func(m msg) bool {
		s := m.str("sylkrtc")
		return (s == "ack" || s == "error") && m.str("transaction") == tx
	}, "the reply to "+tx)
}

// mustAck sends a request and fails unless it is acked.
func (c *client) mustAck(typ string, fields map[string]any) {
	c.t.Helper()
	if r := c.request(typ, fields); r.str("sylkrtc") != "ack" {
		c.t.Fatalf("%s: %v, want ack", typ, r)
	}
}

// wait returns the first message not returned before that matches, waiting
// for it up to waitLong.
func (c *client) wait(match func(msg) bool, what string) msg {
	c.t.Helper()
	m, err := c.waitErr(match, waitLong)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v; got %v", what, err, c.all())
	}
	return m
}

// waitErr is wait with an error instead of a failure.
func (c *client) waitErr(match func(msg) bool, d time.Duration) (msg, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		for i, m := range c.got {
			if !c.used[i] && match(m) {
				c.used[i] = true
				c.mu.Unlock()
				return m, nil
			}
		}
		closed := c.closed
		c.mu.Unlock()
		if closed != nil {
			return nil, fmt.Errorf("socket closed: %w", closed)
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return nil, fmt.Errorf("timed out after %v", d)
		}
	}
}

// all returns every message received, for failure messages.
func (c *client) all() []msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]msg(nil), c.got...)
}

// index returns the position of the first received message matching, or -1.
func (c *client) index(match func(msg) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.got {
		if match(m) {
			return i
		}
	}
	return -1
}

// closedErr waits until the socket is closed and returns why.
func (c *client) closedErr() error {
	select {
	case <-c.done:
	case <-time.After(waitLong):
		c.t.Fatal("socket not closed")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// login adds and registers aor with its test password.
func (c *client) login(aor string) {
	c.t.Helper()
	c.mustAck("account-add", map[string]any{"account": aor, "password": ha1(aor, password(aor)), "display_name": strings.ToUpper(aor[:1]) + aor[1:strings.IndexByte(aor, '@')]})
	c.mustAck("account-register", map[string]any{"account": aor})
	c.wait(regState(aor, "registered"), aor+" registered")
}

// regState matches a sylkRTC-2 registration-state event.
func regState(aor, state string) func(msg) bool {
	return func(m msg) bool {
		return m.str("sylkrtc") == "account-event" && m.str("event") == "registration-state" && m.str("account") == aor && m.str("state") == state
	}
}

// roomEvent matches a videoroom-event of session.
func roomEvent(session, event string) func(msg) bool {
	return func(m msg) bool {
		return m.str("sylkrtc") == "videoroom-event" && m.str("session") == session && m.str("event") == event
	}
}

// roomState matches a videoroom-event session-state of session.
func roomState(session, state string) func(msg) bool {
	return func(m msg) bool { return roomEvent(session, "session-state")(m) && m.str("state") == state }
}

// callState matches a session-event state of session.
func callState(session, state string) func(msg) bool {
	return func(m msg) bool {
		return m.str("sylkrtc") == "session-event" && m.str("session") == session && m.str("event") == "state" && m.str("state") == state
	}
}

// deadline returns a context that ends after d or with the test.
func deadline(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// status returns the HTTP status of a WebSocket handshake offering
// protocols with header h.
func (e *env) status(t *testing.T, protocols []string, h http.Header) int {
	t.Helper()
	d := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: waitLong}
	ws, resp, err := d.Dial(e.url, h)
	if err == nil {
		ws.Close()
	}
	if resp == nil {
		t.Fatalf("no HTTP response: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
