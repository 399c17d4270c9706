package devices

import (
	"net/http"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
)

// TestStreamLimits opens real /subscribe streams against an httptest
// server: one user gets MaxStreamsPerUser streams and then 429, another user
// still gets one, closing a stream frees a place, and past MaxStreams every
// new stream gets 503. Refusals are counted.
func TestStreamLimits(t *testing.T) {
	leakCheck(t)
	in := newInstance(t, Config{MaxStreamsPerUser: 3, MaxStreams: 5})

	var alice []*sseConn
	for _, d := range []string{"d0", "d1", "d2"} {
		alice = append(alice, in.subscribe(t, "alice", d))
	}
	if _, code := in.openStream(t, "/subscribe", "alice", "d3"); code != http.StatusTooManyRequests {
		t.Fatalf("alice's 4th stream (per-user cap 3): status %d, want 429", code)
	}
	if _, code := in.openStream(t, "/subscribe/alice/device/d4", "alice", "d4"); code != http.StatusTooManyRequests {
		t.Fatalf("alice's 4th stream on the legacy path: status %d, want 429", code)
	}
	in.subscribe(t, "bob", "b0") // another user is not affected

	// Closing a stream frees its place once the server has seen it.
	alice[0].close()
	testutil.Eventually(t, 5*time.Second, "the server to see the closed stream", func() bool {
		return in.svc.Streams().Open == 3
	})
	in.subscribe(t, "alice", "d3")

	// A device replacing its own older stream is not a new stream of the user.
	in.subscribe(t, "alice", "d1")
	alice[1].waitEnded(t, 5*time.Second)
	testutil.Eventually(t, 5*time.Second, "the replaced stream to end", func() bool {
		return in.svc.Streams().Open == 4
	})

	// Total cap 5: bob's second stream fills it, then nobody gets one.
	in.subscribe(t, "bob", "b1")
	for _, u := range []string{"carol", "dave", "bob"} {
		if _, code := in.openStream(t, "/subscribe", u, "x"); code != http.StatusServiceUnavailable {
			t.Fatalf("%s's stream past the total cap 5: status %d, want 503", u, code)
		}
	}
	st := in.svc.Streams()
	if st.Open != 5 || st.RefusedPerUser != 2 || st.RefusedTotal != 3 {
		t.Fatalf("stream stats %+v, want 5 open, 2 refused per user, 3 refused in total", st)
	}
	alice[2].close()
	testutil.Eventually(t, 5*time.Second, "a place to free up", func() bool {
		return in.svc.Streams().Open == 4
	})
	in.subscribe(t, "carol", "x")
}

// TestStreamLimitDefaults: zero takes the defaults, negative means no bound.
func TestStreamLimitDefaults(t *testing.T) {
	s, err := New(Config{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.maxUser != DefaultMaxStreamsPerUser || s.maxTotal != DefaultMaxStreams {
		t.Fatalf("defaults %d/%d", s.maxUser, s.maxTotal)
	}
	s2, err := New(Config{Logger: testLogger(), MaxStreamsPerUser: -1, MaxStreams: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.maxUser != 0 || s2.maxTotal != 0 {
		t.Fatalf("negative limits %d/%d, want 0 (no bound)", s2.maxUser, s2.maxTotal)
	}
}
