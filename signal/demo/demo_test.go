package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a demo Server on an in-process NATS, behind an httptest server.
type fixture struct {
	t    *testing.T
	nc   *nats.Conn
	demo *Server
	http *httptest.Server
}

func newFixture(t *testing.T, maxBites int) *fixture {
	t.Helper()
	ns := testutil.StartNATS(t, func(o *server.Options) { o.DontListen = true })
	nc, err := nats.Connect("", nats.InProcessServer(ns.Server()))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{NATS: nc, MaxBites: maxBites})
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	d.Register(r)
	hs := httptest.NewServer(r)
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		hs.Close()
		nc.Close() // the server's own cleanup, registered earlier, runs after this one
	})
	return &fixture{t: t, nc: nc, demo: d, http: hs}
}

// publish sends a bite on NATS and waits until the demo has it.
func (f *fixture) publish(b *beeppb.Bite) {
	f.t.Helper()
	data, err := proto.Marshal(b)
	if err != nil {
		f.t.Fatal(err)
	}
	handled := func() uint64 { // bites kept or ignored so far
		f.demo.mu.Lock()
		defer f.demo.mu.Unlock()
		return f.demo.next + f.demo.ignored
	}
	before := handled()
	if err := f.nc.Publish(BiteSubject, data); err != nil {
		f.t.Fatal(err)
	}
	// The demo handles bites on the subscription's own goroutine.
	testutil.Eventually(f.t, 5*time.Second, "the demo to handle the bite", func() bool { return handled() > before })
}

func oggBite(conv, user string, seq uint64, data string) *beeppb.Bite {
	return &beeppb.Bite{Key: conv, User: user, Client: "c-" + user, StartMs: 1_700_000_000_123 + seq*1000,
		Start: 1_700_000_000 + seq, DurationMs: 1180, Seq: seq, Format: FormatOggOpus, Data: []byte("OggS" + data)}
}

// event is one Server-Sent Event.
type event struct{ id, name, data string }

// sseClient reads an open /demo/events response.
type sseClient struct {
	resp   *http.Response
	events chan event
	cancel context.CancelFunc
}

func (f *fixture) open(query url.Values, lastID string) *sseClient {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.http.URL+"/demo/events?"+query.Encode(), nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		f.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		f.t.Fatalf("GET /demo/events: %s %s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		f.t.Errorf("Content-Type %q", ct)
	}
	s := &sseClient{resp: resp, events: make(chan event, 64), cancel: cancel}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		var e event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if e.name != "" {
					s.events <- e
				}
				e = event{}
			case strings.HasPrefix(line, "id: "):
				e.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				e.data = strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	f.t.Cleanup(s.close)
	return s
}

func (s *sseClient) close() {
	s.cancel()
	s.resp.Body.Close()
	for range s.events {
	}
}

// next returns the next event named name, skipping others.
func (s *sseClient) next(t *testing.T, name string) event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				t.Fatalf("stream ended waiting for %q", name)
			}
			if e.name == name {
				return e
			}
		case <-timeout:
			t.Fatalf("no %q event in 5s", name)
		}
	}
}

// none checks that no event named name arrives within d.
func (s *sseClient) none(t *testing.T, name string, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		select {
		case e, ok := <-s.events:
			if !ok {
				return
			}
			if e.name == name {
				t.Fatalf("unexpected %s event: %s", name, e.data)
			}
		case <-timeout:
			return
		}
	}
}

func decodeBite(t *testing.T, e event) bite {
	t.Helper()
	var b bite
	if err := json.Unmarshal([]byte(e.data), &b); err != nil {
		t.Fatalf("bite event %q: %v", e.data, err)
	}
	return b
}

func decodeMembers(t *testing.T, e event) []member {
	t.Helper()
	var m []member
	if err := json.Unmarshal([]byte(e.data), &m); err != nil {
		t.Fatalf("members event %q: %v", e.data, err)
	}
	return m
}

func get(t *testing.T, u string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestPageAndAssets(t *testing.T) {
	f := newFixture(t, 0)
	for _, c := range []struct{ path, ctype, contains string }{
		{"/", "text/html", `<script type="module" src="/demo/static/app.js">`},
		{"/demo/static/app.js", "text/javascript", "import { Call, randomHex } from './call.js'"},
		{"/demo/static/call.js", "text/javascript", "export class Call"},
		{"/demo/static/style.css", "text/css", ":root"},
	} {
		resp, body := get(t, f.http.URL+c.path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) || !bytes.Contains(body, []byte(c.contains)) {
			t.Errorf("GET %s: %s %q, %d bytes", c.path, resp.Status, resp.Header.Get("Content-Type"), len(body))
		}
		if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: security headers missing: %v", c.path, resp.Header)
		}
	}
	for _, p := range []string{"/demo/static/nope.js", "/index.html", "/demo/bites/1.ogg", "/demo/bites/x.ogg"} {
		if resp, _ := get(t, f.http.URL+p); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, resp.Status)
		}
	}
}

func TestBitesAndMembers(t *testing.T) {
	f := newFixture(t, 0)
	ada := f.open(url.Values{"conversation": {"c1"}, "user": {"u-ada"}, "client": {"c-ada"}, "name": {"  Ada\x07 "}}, "")
	if m := decodeMembers(t, ada.next(t, "members")); len(m) != 1 || m[0].Name != "Ada" || m[0].User != "u-ada" || m[0].Speaking {
		t.Fatalf("members %+v", m)
	}
	watcher := f.open(url.Values{"conversation": {"c1"}}, "")
	if m := decodeMembers(t, watcher.next(t, "members")); len(m) != 1 {
		t.Fatalf("watcher sees members %+v", m)
	}
	other := f.open(url.Values{"conversation": {"c2"}}, "")
	other.next(t, "members")

	// A second member: both member streams hear of it.
	bob := f.open(url.Values{"conversation": {"c1"}, "user": {"u-bob"}, "client": {"c-bob"}, "name": {"Bob"}}, "")
	if m := decodeMembers(t, bob.next(t, "members")); len(m) != 2 || m[0].Name != "Ada" || m[1].Name != "Bob" {
		t.Fatalf("members %+v", m)
	}
	if m := decodeMembers(t, ada.next(t, "members")); len(m) != 2 {
		t.Fatalf("Ada sees members %+v", m)
	}

	// Speaking.
	resp, err := http.Post(f.http.URL+"/demo/speaking", "application/json",
		strings.NewReader(`{"conversation":"c1","user":"u-bob","client":"c-bob","speaking":true}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("POST /demo/speaking: %s", resp.Status)
	}
	if m := decodeMembers(t, ada.next(t, "members")); !m[1].Speaking || m[0].Speaking {
		t.Fatalf("after speaking: %+v", m)
	}
	for _, body := range []string{`{"conversation":"c1","user":"u-eve","client":"c-eve","speaking":true}`, `{`} {
		resp, err := http.Post(f.http.URL+"/demo/speaking", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST /demo/speaking %s: %s", body, resp.Status)
		}
	}

	// A bite of c1 reaches c1's streams only, with a URL that serves it.
	f.publish(oggBite("c1", "u-bob", 0, "hello"))
	f.publish(&beeppb.Bite{Key: "c1", User: "u-bob", Format: "rtp", Data: []byte{0x80}}) // not kept
	f.publish(oggBite("c2", "u-eve", 0, "other"))
	e := ada.next(t, "bite")
	b := decodeBite(t, e)
	if e.id != "1" || b.ID != 1 || b.Conversation != "c1" || b.User != "u-bob" || b.Client != "c-u-bob" || b.Seq != 0 ||
		b.DurationMS != 1180 || b.StartMS != 1_700_000_000_123 || b.Bytes != 9 || b.URL != "/demo/bites/1.ogg" {
		t.Fatalf("bite event id %q: %+v", e.id, b)
	}
	if b2 := decodeBite(t, watcher.next(t, "bite")); b2.ID != 1 {
		t.Fatalf("watcher got %+v", b2)
	}
	if b3 := decodeBite(t, other.next(t, "bite")); b3.Conversation != "c2" || b3.ID != 2 {
		t.Fatalf("c2 got %+v", b3)
	}
	ada.none(t, "bite", 100*time.Millisecond) // neither the rtp bite nor c2's

	resp, body := get(t, f.http.URL+b.URL)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "audio/ogg; codecs=opus" || string(body) != "OggShello" {
		t.Fatalf("GET %s: %s %q %q", b.URL, resp.Status, resp.Header.Get("Content-Type"), body)
	}
	req, _ := http.NewRequest(http.MethodGet, f.http.URL+b.URL, nil)
	req.Header.Set("Range", "bytes=4-")
	rr, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(rr.Body)
	rr.Body.Close()
	if rr.StatusCode != http.StatusPartialContent || string(part) != "hello" {
		t.Errorf("range request: %s %q", rr.Status, part)
	}

	// Bob leaves: Ada hears of it.
	bob.close()
	if m := decodeMembers(t, ada.next(t, "members")); len(m) != 1 || m[0].Name != "Ada" {
		t.Fatalf("after Bob left: %+v", m)
	}
}

func TestBacklogResumeAndRing(t *testing.T) {
	f := newFixture(t, 3)
	for i := range uint64(4) {
		f.publish(oggBite("c1", "u-ada", i, "x"))
	}
	// The ring keeps 3: bite 1 is gone.
	if resp, _ := get(t, f.http.URL+"/demo/bites/1.ogg"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("evicted bite: %s", resp.Status)
	}
	if resp, _ := get(t, f.http.URL+"/demo/bites/4.ogg"); resp.StatusCode != http.StatusOK {
		t.Errorf("newest bite: %s", resp.Status)
	}
	if resp, _ := get(t, f.http.URL+"/demo/bites/5.ogg"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("future bite: %s", resp.Status)
	}

	// A new stream gets the kept bites of its conversation, oldest first.
	s := f.open(url.Values{"conversation": {"c1"}}, "")
	for _, want := range []string{"2", "3", "4"} {
		if e := s.next(t, "bite"); e.id != want {
			t.Fatalf("backlog: id %s, want %s", e.id, want)
		}
	}
	// A resuming stream gets only what it missed.
	r := f.open(url.Values{"conversation": {"c1"}}, "3")
	if e := r.next(t, "bite"); e.id != "4" {
		t.Fatalf("resume: id %s, want 4", e.id)
	}
	r.none(t, "bite", 100*time.Millisecond)
	f.publish(oggBite("c1", "u-ada", 4, "x"))
	if e := r.next(t, "bite"); e.id != "5" {
		t.Fatalf("live after resume: id %s, want 5", e.id)
	}
}

func TestBadRequests(t *testing.T) {
	f := newFixture(t, 0)
	for _, q := range []string{
		"", // no conversation
		"conversation=" + strings.Repeat("x", 300),   // too long
		"conversation=c1&user=u1",                    // member without client and name
		"conversation=c1&user=u1&client=c1&name=%20", // blank name
	} {
		resp, _ := get(t, f.http.URL+"/demo/events?"+q)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET /demo/events?%s: %s, want 400", q, resp.Status)
		}
	}
	if _, err := New(Config{MaxBites: -1}); err == nil {
		t.Error("MaxBites -1 accepted")
	}
}

func TestCloseEndsStreams(t *testing.T) {
	f := newFixture(t, 0)
	s := f.open(url.Values{"conversation": {"c1"}}, "")
	s.next(t, "members")
	done := make(chan error, 1)
	go func() { done <- f.demo.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case _, ok := <-s.events:
		if ok {
			for range s.events {
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream still open after Close")
	}
	// Closed: new streams are refused, Close again is fine.
	resp, _ := get(t, f.http.URL+"/demo/events?conversation=c1")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("stream after Close: %s", resp.Status)
	}
	if err := f.demo.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestWithoutNATS(t *testing.T) {
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	d.Register(r)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("GET /: %d", rec.Code)
	}
	if err := d.Close(); err != nil {
		t.Error(err)
	}
}
