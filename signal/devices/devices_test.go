package devices

import (
	"context"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/claim"

	"github.com/beepvoice/router/internal/testutil"
)

var alicePhone = claim.Claim{UserID: "alice", ClientID: "phone"}

// leakCheck verifies, after all of the test's cleanups, that no goroutine
// started during the test is left.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

var deliveryCases = []struct {
	name, event, data string
	want              []string // raw lines of the event
}{
	{"event and data", "offer", "v=0 sdp", []string{"id: alice:phone", "event: offer", "data: v=0 sdp"}},
	{"no event", "", "hello", []string{"id: alice:phone", "data: hello"}},
	{"multi-line LF", "candidate", "a\nb\nc", []string{"id: alice:phone", "event: candidate", "data: a", "data: b", "data: c"}},
	{"CRLF and CR", "", "a\r\nb\rc", []string{"id: alice:phone", "data: a", "data: b", "data: c"}},
	{"empty line inside", "", "a\n\nb", []string{"id: alice:phone", "data: a", "data: ", "data: b"}},
	{"trailing newline", "", "x\n", []string{"id: alice:phone", "data: x", "data: "}},
	{"leading space and colon", "", " ü: 1", []string{"id: alice:phone", "data:  ü: 1"}},
	{"json payload", "answer", `{"type":"answer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}`,
		[]string{"id: alice:phone", "event: answer", `data: {"type":"answer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}`}},
}

// TestDeliver posts to a subscribed device, on one instance without NATS
// and across two instances sharing NATS, and checks the exact lines.
func TestDeliver(t *testing.T) {
	leakCheck(t)
	modes := []struct {
		name string
		// setup returns the instance to subscribe on and the one to post to.
		setup func(t *testing.T) (sub, post *instance)
	}{
		{"single instance", func(t *testing.T) (*instance, *instance) {
			in := newInstance(t, Config{})
			return in, in
		}},
		{"across instances", func(t *testing.T) (*instance, *instance) {
			url := startNATS(t)
			a := newInstance(t, Config{NATS: testutil.ConnectNATS(t, url), InstanceID: "a", Heartbeat: 50 * time.Millisecond})
			b := newInstance(t, Config{NATS: testutil.ConnectNATS(t, url), InstanceID: "b", Heartbeat: 50 * time.Millisecond})
			return a, b
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			subIn, postIn := m.setup(t)
			c := subIn.subscribe(t, "bob", "laptop")
			for _, tc := range deliveryCases {
				t.Run(tc.name, func(t *testing.T) {
					if code := postIn.post(t, alicePhone, "bob", "laptop", postBodyJSON(tc.data, tc.event)); code != http.StatusOK {
						t.Fatalf("post: %d", code)
					}
					ev := c.nextEvent(t)
					if !sameList(ev.lines, tc.want...) {
						t.Fatalf("lines\n got %q\nwant %q", ev.lines, tc.want)
					}
					// What an EventSource reassembles.
					if got, want := strings.Join(ev.data, "\n"), strings.NewReplacer("\r\n", "\n", "\r", "\n").Replace(tc.data); got != want {
						t.Fatalf("data %q, want %q", got, want)
					}
				})
			}
		})
	}
}

func TestFormatEvent(t *testing.T) {
	got := string(formatEvent("u:c", "", "a\r\n\r\nb"))
	want := "id: u:c\ndata: a\ndata: \ndata: b\n\n"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestLegacySubscribePath(t *testing.T) {
	leakCheck(t)
	in := newInstance(t, Config{})
	c, code := in.openStream(t, "/subscribe/bob/device/laptop", "bob", "laptop")
	if code != http.StatusOK {
		t.Fatalf("legacy subscribe: %d", code)
	}
	if code := in.post(t, alicePhone, "bob", "laptop", postBodyJSON("hi", "greet")); code != http.StatusOK {
		t.Fatalf("post: %d", code)
	}
	if ev := c.nextEvent(t); ev.id != "alice:phone" || ev.event != "greet" || !sameList(ev.data, "hi") {
		t.Fatalf("event %+v", ev)
	}
	for _, tc := range []struct {
		name, path, user, device string
		want                     int
	}{
		{"other device", "/subscribe/bob/device/laptop", "bob", "phone", http.StatusForbidden},
		{"other user", "/subscribe/bob/device/laptop", "carol", "laptop", http.StatusForbidden},
		{"no claim", "/subscribe/bob/device/laptop", "", "", http.StatusUnauthorized},
		{"no claim, new path", "/subscribe", "", "", http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, code := in.openStream(t, tc.path, tc.user, tc.device); code != tc.want {
				t.Fatalf("got %d, want %d", code, tc.want)
			}
		})
	}
}

func TestDeviceList(t *testing.T) {
	leakCheck(t)
	in := newInstance(t, Config{})
	if code, _ := in.devices(t, "bob", false); code != http.StatusUnauthorized {
		t.Fatalf("without claim: %d", code)
	}
	code, body := in.devices(t, "bob", true)
	if code != http.StatusOK || body != "[]\n" {
		t.Fatalf("empty list: %d %q", code, body)
	}
	laptop := in.subscribe(t, "bob", "laptop")
	if l := in.deviceList(t, "bob"); !sameList(l, "laptop") {
		t.Fatalf("after one subscription: %q", l)
	}
	phone := in.subscribe(t, "bob", "phone")
	if l := in.deviceList(t, "bob"); !sameList(l, "laptop", "phone") {
		t.Fatalf("after two subscriptions: %q", l)
	}
	if l := in.deviceList(t, "alice"); !sameList(l) {
		t.Fatalf("other user: %q", l)
	}
	laptop.close()
	testutil.Eventually(t, 5*time.Second, "laptop to leave", func() bool { return sameList(in.deviceList(t, "bob"), "phone") })
	phone.close()
	testutil.Eventually(t, 5*time.Second, "list to be empty", func() bool {
		_, body := in.devices(t, "bob", true)
		return body == "[]\n"
	})
}

func TestPostErrors(t *testing.T) {
	leakCheck(t)
	const maxData = 1024
	in := newInstance(t, Config{MaxData: maxData})
	c := in.subscribe(t, "bob", "laptop")
	good := claimHeader("alice", "phone")
	tests := []struct {
		name, claim, target, body string
		want                      int
	}{
		{"no claim", "", "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim not JSON", "alice", "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim without clientid", `{"userid":"alice"}`, "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim with newline", `{"userid":"alice\n","clientid":"phone"}`, "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim with C1 control", `{"userid":"alice","clientid":"phone\u0085"}`, "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim with bidi override", `{"userid":"\u202ealice","clientid":"phone"}`, "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"claim with invalid UTF-8", "{\"userid\":\"alice\xff\",\"clientid\":\"phone\"}", "bob/device/laptop", `{"data":"x"}`, http.StatusUnauthorized},
		{"target device with C1 control", good, "bob/device/laptop%C2%85", `{"data":"x"}`, http.StatusBadRequest},
		{"target user with line separator", good, "bob%E2%80%A8/device/laptop", `{"data":"x"}`, http.StatusBadRequest},
		{"bad JSON", good, "bob/device/laptop", `{"data":`, http.StatusBadRequest},
		{"JSON array", good, "bob/device/laptop", `["x"]`, http.StatusBadRequest},
		{"no data", good, "bob/device/laptop", `{"event":"offer"}`, http.StatusBadRequest},
		{"empty data", good, "bob/device/laptop", `{"data":""}`, http.StatusBadRequest},
		{"data not a string", good, "bob/device/laptop", `{"data":5}`, http.StatusBadRequest},
		{"event with newline", good, "bob/device/laptop", `{"data":"x","event":"a\nb"}`, http.StatusBadRequest},
		{"device not connected", good, "bob/device/phone", `{"data":"x"}`, http.StatusNotFound},
		{"user not connected", good, "carol/device/laptop", `{"data":"x"}`, http.StatusNotFound},
		{"too large", good, "bob/device/laptop", postBodyJSON(strings.Repeat("x", maxData), ""), http.StatusRequestEntityTooLarge},
		{"just under the limit", good, "bob/device/laptop", postBodyJSON(strings.Repeat("y", maxData-20), ""), http.StatusOK},
		{"ok", good, "bob/device/laptop", `{"data":"z","event":"offer"}`, http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, in.srv.URL+"/user/"+tc.target, strings.NewReader(tc.body))
			if tc.claim != "" {
				req.Header.Set(claim.Header, tc.claim)
			}
			resp, err := in.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// Exactly the two accepted posts arrived.
	if ev := c.nextEvent(t); len(ev.data) != 1 || ev.data[0] != strings.Repeat("y", maxData-20) {
		t.Fatalf("first event: %d data lines", len(ev.data))
	}
	if ev := c.nextEvent(t); ev.event != "offer" || !sameList(ev.data, "z") {
		t.Fatalf("second event %+v", ev)
	}
}

func TestReplaceOlderSubscription(t *testing.T) {
	leakCheck(t)
	in := newInstance(t, Config{})
	old := in.subscribe(t, "bob", "laptop")
	cur := in.subscribe(t, "bob", "laptop")
	old.waitEnded(t, 5*time.Second)
	// The old stream's end must not remove the new one.
	if l := in.deviceList(t, "bob"); !sameList(l, "laptop") {
		t.Fatalf("list after replacement: %q", l)
	}
	if code := in.post(t, alicePhone, "bob", "laptop", postBodyJSON("to the new one", "")); code != http.StatusOK {
		t.Fatalf("post: %d", code)
	}
	if ev := cur.nextEvent(t); !sameList(ev.data, "to the new one") {
		t.Fatalf("event %+v", ev)
	}
	cur.close()
	testutil.Eventually(t, 5*time.Second, "list to be empty", func() bool { return sameList(in.deviceList(t, "bob")) })
}

// TestSlowReader: a client that never reads gets its stream closed when its
// queue overflows, and no poster waits on it.
func TestSlowReader(t *testing.T) {
	leakCheck(t)
	in := newInstanceBuffers(t, Config{QueueLen: 4, MaxData: 128 << 10}, 32<<10)
	req, _ := http.NewRequest(http.MethodGet, in.srv.URL+"/subscribe", nil)
	req.Header.Set(claim.Header, claimHeader("bob", "laptop"))
	resp, err := in.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("subscribe: %d", resp.StatusCode)
	}
	// Never read resp.Body: the socket buffers fill, the writer blocks, the
	// queue overflows.
	body := postBodyJSON(strings.Repeat("x", 100<<10), "")
	const perPost = 5 * time.Second
	var slowest time.Duration
	n, closed := 0, false
	for ; n < 5000 && !closed; n++ {
		ctx, cancel := context.WithTimeout(context.Background(), perPost)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, in.srv.URL+"/user/bob/device/laptop", strings.NewReader(body))
		req.Header.Set(claim.Header, claimHeader("alice", "phone"))
		start := time.Now()
		r, err := in.client.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("post %d blocked or failed: %v", n, err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		cancel()
		slowest = max(slowest, time.Since(start))
		switch r.StatusCode {
		case http.StatusOK:
		case http.StatusNotFound:
			closed = true
		default:
			t.Fatalf("post %d: %d", n, r.StatusCode)
		}
	}
	if !closed {
		t.Fatalf("stream not closed after %d posts", n)
	}
	t.Logf("stream closed after %d posts of 100 KiB; slowest post %v", n, slowest)
	if l := in.deviceList(t, "bob"); !sameList(l) {
		t.Fatalf("overflowed device still listed: %q", l)
	}
	// The client sees its stream end (after what was buffered).
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, resp.Body)
		ended <- err
	}()
	select {
	case err := <-ended:
		t.Logf("stream ended for the client: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("client stream did not end")
	}
	// The device can come back.
	c := in.subscribe(t, "bob", "laptop")
	if code := in.post(t, alicePhone, "bob", "laptop", postBodyJSON("again", "")); code != http.StatusOK {
		t.Fatalf("post after reconnect: %d", code)
	}
	if ev := c.nextEvent(t); !sameList(ev.data, "again") {
		t.Fatalf("event %+v", ev)
	}
}

func TestKeepAlive(t *testing.T) {
	leakCheck(t)
	in := newInstance(t, Config{KeepAlive: 20 * time.Millisecond})
	c := in.subscribe(t, "bob", "laptop")
	timeout := time.After(5 * time.Second)
	for n := 0; n < 3; {
		select {
		case it := <-c.items:
			if it.comment == ": keep-alive" {
				n++
			}
		case <-timeout:
			t.Fatal("keep-alive comments did not arrive")
		}
	}
}

// TestCloseEndsStreams: Close ends the streams and every NATS subscription
// of the service while the caller's connection stays open.
func TestCloseEndsStreams(t *testing.T) {
	leakCheck(t)
	url := startNATS(t)
	in := newInstance(t, Config{NATS: testutil.ConnectNATS(t, url), Heartbeat: 50 * time.Millisecond})
	a := in.subscribe(t, "bob", "laptop")
	b := in.subscribe(t, "bob", "phone")
	// nats.go runs one goroutine per async subscription: presence + 2 devices.
	if n := natsSubGoroutines(); n != 3 {
		t.Fatalf("%d subscription goroutines before Close, want 3", n)
	}
	if err := in.svc.Close(); err != nil {
		t.Fatal(err)
	}
	a.waitEnded(t, 5*time.Second)
	b.waitEnded(t, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, "subscription goroutines to end", func() bool { return natsSubGoroutines() == 0 })
	if _, code := in.openStream(t, "/subscribe", "bob", "laptop"); code != http.StatusServiceUnavailable {
		t.Fatalf("subscribe after Close: %d", code)
	}
	if code := in.post(t, alicePhone, "bob", "laptop", `{"data":"x"}`); code != http.StatusServiceUnavailable {
		t.Fatalf("post after Close: %d", code)
	}
	if err := in.svc.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// natsSubGoroutines counts the goroutines delivering messages of nats.go
// async subscriptions.
func natsSubGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "(*Conn).waitForMsgs(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestNewValidation(t *testing.T) {
	for _, p := range []string{"a b.", "a.*.", "x.>", ".a", "a..b"} {
		if s, err := New(Config{SubjectPrefix: p, Logger: testLogger()}); err == nil {
			s.Close()
			t.Errorf("prefix %q accepted", p)
		}
	}
	s, err := New(Config{SubjectPrefix: "beep.sig", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.prefix != "beep.sig." {
		t.Fatalf("prefix %q", s.prefix)
	}
}

func TestSubjectToken(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"u-0123abcd", "a.b", "a*b", "a>b", "a b", "a%2Eb", "%", "ü", "a_b-C9", "a.", "a%"} {
		tok := subjectToken(id)
		if tok == "" || strings.ContainsAny(tok, ". \t*>") {
			t.Errorf("%q → invalid token %q", id, tok)
		}
		if other, dup := seen[tok]; dup {
			t.Errorf("%q and %q both → %q", id, other, tok)
		}
		seen[tok] = id
	}
	if got := subjectToken("u-0123abcd"); got != "u-0123abcd" {
		t.Errorf("plain id changed: %q", got)
	}
}
