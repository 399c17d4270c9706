package arbiter

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/handlers"
	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beepvoice/router/internal/testutil"
)

// TestRoomAPI checks every answer of the room API, in the order a client
// meets them, on one router: bad input, CORS, creation, claims (a path
// claimed twice keeps its room), lookups with the urlPath as the client
// sends it (unencoded in the query, as it is in the JSON body).
func TestRoomAPI(t *testing.T) {
	r := newRouter(t, testutil.ConnectNATS(t, startJetStream(t, "").URL()), Config{})
	steps := []struct {
		name, method, path, body string
		code                     int
		message                  string // the answer's message, if it has one
	}{
		{"getRoomId without urlPath", "GET", "/getRoomId", "", 400, "missing urlPath"},
		{"getRoomId with another parameter", "GET", "/getRoomId?x=1", "", 400, "missing urlPath"},
		{"getRoomId with an empty urlPath", "GET", "/getRoomId?urlPath=", "", 400, "missing urlPath"},
		{"getRoomId with a huge urlPath", "GET", "/getRoomId?urlPath=/" + strings.Repeat("a", maxURLPath), "", 400, "urlPath too long"},
		{"getRoomId unknown path", "GET", "/getRoomId?urlPath=/myRoom", "", 404, "Room not found"},
		{"claimRoom without a free room", "PATCH", "/claimRoom", `{"urlPath":"/myRoom"}`, 404, "Room not found"},
		{"claimRoom without body", "PATCH", "/claimRoom", "", 400, "missing urlPath"},
		{"claimRoom bad JSON", "PATCH", "/claimRoom", `{"urlPath":`, 400, "missing urlPath"},
		{"claimRoom {}", "PATCH", "/claimRoom", `{}`, 400, "missing urlPath"},
		{"claimRoom null urlPath", "PATCH", "/claimRoom", `{"urlPath":null}`, 400, "missing urlPath"},
		{"claimRoom number urlPath", "PATCH", "/claimRoom", `{"urlPath":5}`, 400, "missing urlPath"},
		{"claimRoom empty urlPath", "PATCH", "/claimRoom", `{"urlPath":""}`, 400, "missing urlPath"},
		{"claimRoom array body", "PATCH", "/claimRoom", `["/myRoom"]`, 400, "missing urlPath"},
		{"claimRoom oversized body", "PATCH", "/claimRoom", `{"urlPath":"` + strings.Repeat("a", maxBody) + `"}`, 400, "missing urlPath"},
		{"claimRoom with GET", "GET", "/claimRoom", "", 405, "method GET not allowed"},
		{"createRoom with DELETE", "DELETE", "/createRoom", "", 405, "method DELETE not allowed"},
	}
	for _, st := range steps {
		a := r.call(t, st.method, st.path, st.body)
		if a.code != st.code || a.str("message") != st.message {
			t.Errorf("%s: %d %s, want %d with message %q", st.name, a.code, a.raw, st.code, st.message)
		}
		if got := a.header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("%s: Access-Control-Allow-Origin %q, want *", st.name, got)
		}
		if ct := a.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", st.name, ct)
		}
	}

	// createRoom: PUT (the docs) and POST (the deploy tool).
	rooms := map[string]bool{}
	for _, m := range []string{"PUT", "POST", "PUT", "POST", "PUT", "POST"} {
		a := r.call(t, m, "/createRoom", `{"any":"thing"}`)
		if a.code != 200 || a.str("message") != "Task started successfully!" || !validRoomID(a.str("roomId")) || rooms[a.str("roomId")] {
			t.Fatalf("%s /createRoom: %d %s", m, a.code, a.raw)
		}
		rooms[a.str("roomId")] = true
	}

	// A claim, then the client's getRoomId: both fields, same room; a
	// second claim of the same path answers the same room.
	paths := []struct{ claim, query string }{
		{"/myRoom", "/myRoom"},
		{"/my+room", "/my+room"},     // "+" is not a space in either
		{"/caf%C3%A9", "/caf%C3%A9"}, // as a browser's pathname has it
		{"/café", "/caf%C3%A9"},      // the same path, decoded
		{"/a%20b", "/a%20b"},         // an encoded space
		{"/myRoom?x", "/myRoom%3Fx"}, // a query character, escaped by the page
		{"myRoom", "myRoom"},         // the docs' form, without the slash: another path
		{"/myRoom", "/myRoom&other=ignored"},
	}
	claimed := map[string]string{} // canonical path → room
	for _, p := range paths {
		b, _ := json.Marshal(map[string]string{"urlPath": p.claim})
		a := r.call(t, "PATCH", "/claimRoom", string(b))
		if a.code != 200 || !rooms[a.str("roomId")] || a.str("id") != a.str("roomId") {
			t.Fatalf("claim %q: %d %s", p.claim, a.code, a.raw)
		}
		id := a.str("roomId")
		if prev, ok := claimed[canonicalPath(p.claim)]; ok && prev != id {
			t.Errorf("claim %q again: room %s, first claim got %s", p.claim, id, prev)
		}
		claimed[canonicalPath(p.claim)] = id
		g := r.call(t, "GET", "/getRoomId?urlPath="+p.query, "")
		if g.code != 200 || g.str("id") != id || g.str("roomId") != id {
			t.Errorf("getRoomId?urlPath=%s after claiming %q: %d %s, want room %s in id and roomId", p.query, p.claim, g.code, g.raw, id)
		}
	}
	if len(claimed) != 6 {
		t.Fatalf("%d distinct paths claimed, want 6: %v", len(claimed), claimed)
	}
	// Six rooms, six paths: none is left.
	if a := r.call(t, "PATCH", "/claimRoom", `{"urlPath":"/fifth"}`); a.code != 404 {
		t.Errorf("claim with every room taken: %d %s", a.code, a.raw)
	}
}

// TestCORS checks the preflight of a PATCH with JSON and the origin
// policy: any origin by default; a list refuses other origins (403, no
// CORS headers) and echoes listed ones; requests without Origin pass.
func TestCORS(t *testing.T) {
	n := startJetStream(t, "")
	tests := []struct {
		name    string
		origins []string
		origin  string
		code    int    // of GET /getRoomId?urlPath=/x
		allow   string // its Access-Control-Allow-Origin
	}{
		{"default allows any", nil, customer, 404, "*"},
		{"star allows any", []string{"*"}, customer, 404, "*"},
		{"listed origin", []string{"http://other.example", customer}, customer, 404, customer},
		{"unlisted origin", []string{"http://other.example"}, customer, 403, ""},
		{"no origin", []string{"http://other.example"}, "", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{Origins: tt.origins})
			req, _ := http.NewRequest("GET", r.http.URL+"/getRoomId?urlPath=/x", nil)
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.code || resp.Header.Get("Access-Control-Allow-Origin") != tt.allow {
				t.Errorf("GET: %d, Allow-Origin %q; want %d, %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), tt.code, tt.allow)
			}
			if tt.allow == "" {
				return // the customer's origin is not allowed: no preflight
			}
			// The browser's preflight of PATCH /claimRoom with JSON.
			req, _ = http.NewRequest("OPTIONS", r.http.URL+"/claimRoom", nil)
			req.Header.Set("Origin", customer)
			req.Header.Set("Access-Control-Request-Method", "PATCH")
			req.Header.Set("Access-Control-Request-Headers", "content-type")
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != 204 || !strings.Contains(h.Get("Access-Control-Allow-Methods"), "PATCH") ||
				h.Get("Access-Control-Allow-Headers") != "content-type" || h.Get("Access-Control-Max-Age") != "86400" || h.Get("Access-Control-Allow-Origin") == "" {
				t.Errorf("preflight: %d %v", resp.StatusCode, h)
			}
		})
	}
}

// TestConcurrentClaims: 100 claims of distinct paths race for 10 free
// rooms: exactly 10 win, each a different room, and 90 are answered 404;
// then 20 claims of one path race for the 5 rooms made next: all get the
// same room, and the other 4 rooms stay free. Half of the claims go to a
// second router on the same NATS.
func TestConcurrentClaims(t *testing.T) {
	n := startJetStream(t, "")
	a := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	b := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	for range 10 {
		a.createRoom(t)
	}
	var mu sync.Mutex
	codes := map[int]int{}
	winners := map[string]string{} // room → path
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := a
			if i%2 == 1 {
				r = b
			}
			<-start
			path := fmt.Sprintf("/room-%d", i)
			ans := r.call(t, "PATCH", "/claimRoom", `{"urlPath":"`+path+`"}`)
			mu.Lock()
			defer mu.Unlock()
			codes[ans.code]++
			if ans.code == 200 {
				if prev, ok := winners[ans.str("roomId")]; ok {
					t.Errorf("room %s won by %s and %s", ans.str("roomId"), prev, path)
				}
				winners[ans.str("roomId")] = path
			}
		}()
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("100 concurrent claims for 10 rooms on two routers: %v in %v", codes, time.Since(began).Round(time.Millisecond))
	if codes[200] != 10 || codes[404] != 90 || len(winners) != 10 {
		t.Fatalf("answers %v with %d distinct rooms; want 10 × 200 with 10 rooms, 90 × 404", codes, len(winners))
	}
	// Every winner's path leads to its room, on both routers.
	for id, path := range winners {
		for _, r := range []*router{a, b} {
			if g := r.call(t, "GET", "/getRoomId?urlPath="+path, ""); g.str("id") != id {
				t.Errorf("getRoomId %s: %s, want %s", path, g.raw, id)
			}
		}
	}

	// One path, 20 claims, 5 free rooms.
	for range 5 {
		b.createRoom(t)
	}
	got := make(chan string, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := a
			if i%2 == 1 {
				r = b
			}
			got <- r.claim(t, "/together")
		}()
	}
	wg.Wait()
	close(got)
	var first string
	for id := range got {
		if first == "" {
			first = id
		}
		if id != first {
			t.Errorf("claims of one path got rooms %s and %s", first, id)
		}
	}
	free := 0
	for i := range 6 {
		ans := a.call(t, "PATCH", "/claimRoom", fmt.Sprintf(`{"urlPath":"/after-%d"}`, i))
		if ans.code == 200 {
			free++
		}
	}
	if free != 4 {
		t.Errorf("%d rooms left free after 20 claims of one path among 5, want 4", free)
	}

	// One path, 8 claims, the last free room: every claim gets it (none is
	// answered 404 while another claim of the same path holds the room but
	// has not yet written the path's key). Rounds, as the window is short.
	for round := range 10 {
		room := a.createRoom(t)
		path := fmt.Sprintf("/last-room-%d", round)
		answers := make(chan string, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := a
				if i%2 == 1 {
					r = b
				}
				ans := r.call(t, "PATCH", "/claimRoom", `{"urlPath":"`+path+`"}`)
				answers <- fmt.Sprintf("%d %s", ans.code, ans.str("roomId"))
			}()
		}
		wg.Wait()
		close(answers)
		for got := range answers {
			if want := "200 " + room; got != want {
				t.Errorf("round %d: a claim of %s, the last free room being %s, answered %q", round, path, room, got)
			}
		}
	}
}

// TestStoreSurvivesRestart: rooms and claims are in JetStream's file
// store: after NATS and the router restart, the claimed path has its room
// and the free rooms are still free.
func TestStoreSurvivesRestart(t *testing.T) {
	n := startJetStream(t, t.TempDir())
	nc := testutil.ConnectNATS(t, n.URL())
	a := newRouter(t, nc, Config{})
	var rooms []string
	for range 3 {
		rooms = append(rooms, a.createRoom(t))
	}
	id := a.claim(t, "/kept")
	a.Close()
	nc.Close()
	n.Stop()
	n.Start()

	b := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	if g := b.call(t, "GET", "/getRoomId?urlPath=/kept", ""); g.code != 200 || g.str("id") != id {
		t.Fatalf("after restart getRoomId /kept: %d %s, want room %s", g.code, g.raw, id)
	}
	if again := b.claim(t, "/kept"); again != id {
		t.Errorf("after restart a claim of /kept got %s, want %s", again, id)
	}
	for i := range 2 {
		got := b.claim(t, fmt.Sprintf("/new-%d", i))
		if got == id || !contains(rooms, got) {
			t.Errorf("claim after restart got %s, not one of the free rooms %v", got, rooms)
		}
	}
	if a := b.call(t, "PATCH", "/claimRoom", `{"urlPath":"/none"}`); a.code != 404 {
		t.Errorf("claim with no free room after restart: %d %s", a.code, a.raw)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestTwoRoutersShareRooms: a room made on one router is claimed at once
// on the other (which has not necessarily seen it yet), and both answer
// getRoomId alike.
func TestTwoRoutersShareRooms(t *testing.T) {
	n := startJetStream(t, "")
	a := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	b := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	for i := range 5 {
		made, by := a, b
		if i%2 == 1 {
			made, by = b, a
		}
		id := made.createRoom(t)
		path := fmt.Sprintf("/shared-%d", i)
		if got := by.claim(t, path); got != id {
			t.Fatalf("claim on the other router got %s, want the room just made, %s", got, id)
		}
		for _, r := range []*router{a, b} {
			if g := r.call(t, "GET", "/getRoomId?urlPath="+path, ""); g.str("id") != id {
				t.Errorf("getRoomId %s: %s, want %s", path, g.raw, id)
			}
		}
	}
}

// TestIdleRoomsAndLimit: IdleRooms free rooms are made at start and after
// each claim; MaxRooms bounds createRoom (503) and the idle rooms.
func TestIdleRoomsAndLimit(t *testing.T) {
	n := startJetStream(t, "")
	r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{IdleRooms: 2, MaxRooms: 4})
	st, err := r.store()
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, rooms, free int) {
		t.Helper()
		if gr, gf := st.counts(); gr != rooms || gf != free {
			t.Errorf("%s: %d rooms, %d free; want %d, %d", what, gr, gf, rooms, free)
		}
	}
	check("at start", 2, 2)
	r.claim(t, "/one")
	check("after a claim", 3, 2)
	r.claim(t, "/two")
	check("after two claims", 4, 2)
	if a := r.call(t, "PUT", "/createRoom", ""); a.code != 503 || !strings.Contains(a.str("message"), "room limit") {
		t.Errorf("createRoom past MaxRooms: %d %s", a.code, a.raw)
	}
	r.claim(t, "/three")
	check("claim at the limit", 4, 1)
	if _, err := New(Config{Rooms: r.cfg.Rooms, NATS: r.cfg.NATS, IdleRooms: 5, MaxRooms: 4}); err == nil {
		t.Error("IdleRooms over MaxRooms accepted")
	}
}

// TestNoJetStream: on a NATS without JetStream the router still starts;
// the room API answers 503 saying why, and identify is refused.
func TestNoJetStream(t *testing.T) {
	n := testutil.StartNATS(t)
	logs := &testutil.Buffer{}
	r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{Logger: slogTo(logs)})
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/getRoomId?urlPath=/x", ""},
		{"PATCH", "/claimRoom", `{"urlPath":"/x"}`},
		{"PUT", "/createRoom", ""},
	} {
		a := r.call(t, c.method, c.path, c.body)
		if a.code != 503 || !strings.Contains(a.str("message"), "JetStream") {
			t.Errorf("%s %s: %d %s, want 503 naming JetStream", c.method, c.path, a.code, a.raw)
		}
	}
	if got := strings.Count(logs.String(), "room store unavailable"); got != 1 {
		t.Errorf("the missing JetStream logged %d times, want once:\n%s", got, logs.String())
	}
}

// TestRepairAtStart: a room left taken without its path key (a router
// stopped between the two writes of a claim) is given back at the next
// start, once older than the grace; a recent one is left to its claim.
func TestRepairAtStart(t *testing.T) {
	n := startJetStream(t, "")
	nc := testutil.ConnectNATS(t, n.URL())
	a := newRouter(t, nc, Config{})
	old, recent := a.createRoom(t), a.createRoom(t)
	a.Close()

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := deadline(t, waitLong)
	kv, err := js.KeyValue(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	for id, at := range map[string]time.Time{old: time.Now().Add(-2 * claimGrace), recent: time.Now()} {
		b, _ := json.Marshal(record{URLPath: "/half-" + id, Claimed: at.UnixMilli()})
		if _, err := kv.Put(ctx, roomPrefix+id, b); err != nil {
			t.Fatal(err)
		}
	}
	b := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
	if got := b.claim(t, "/after"); got != old {
		t.Errorf("claim after the repair got %s, want the repaired room %s", got, old)
	}
	if ans := b.call(t, "PATCH", "/claimRoom", `{"urlPath":"/more"}`); ans.code != 404 {
		t.Errorf("the recently taken room was given back: %d %s", ans.code, ans.raw)
	}
}

// TestBypass: behind Bypass, the Arbiter routes keep their own CORS when
// the rest of the router has a CORS policy (gorilla's, as cmd/router uses
// for ALLOWED_ORIGINS) that does not know the customer's origin; other
// routes still go through that policy.
func TestBypass(t *testing.T) {
	nc := testutil.ConnectNATS(t, startJetStream(t, "").URL())
	s, err := New(Config{Rooms: newManager(t, testLog(t)), NATS: nc, Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	other := mux.NewRouter()
	other.HandleFunc("/other", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	policy := handlers.CORS(handlers.AllowedOrigins([]string{"http://beep.example"}), handlers.AllowedMethods([]string{"GET", "POST"}))(other)
	h := httptest.NewServer(s.Bypass(policy))
	defer h.Close()

	for _, c := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"OPTIONS", "/claimRoom", 204, "*"},
		{"GET", "/getRoomId?urlPath=/x", 404, "*"},
		{"OPTIONS", "/other", 200, ""}, // gorilla's policy: not the customer's origin
		{"GET", "/other", 418, ""},
	} {
		req, _ := http.NewRequest(c.method, h.URL+c.path, nil)
		req.Header.Set("Origin", customer)
		if c.method == "OPTIONS" {
			req.Header.Set("Access-Control-Request-Method", "PATCH")
			req.Header.Set("Access-Control-Request-Headers", "content-type")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.code || resp.Header.Get("Access-Control-Allow-Origin") != c.allow {
			t.Errorf("%s %s: %d, Allow-Origin %q; want %d, %q", c.method, c.path, resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"), c.code, c.allow)
		}
	}
}

// TestEmbeddedInProcess: the store works on an embedded NATS as cmd/router
// runs it (in-process only, DontListen) once JetStream is on with a store
// directory, and its rooms survive a restart of that server.
func TestEmbeddedInProcess(t *testing.T) {
	dir := t.TempDir()
	start := func() (*server.Server, *nats.Conn) {
		ns, err := server.NewServer(&server.Options{ServerName: "beep-router", NoSigs: true, NoLog: true, DontListen: true, JetStream: true, StoreDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("embedded NATS not ready")
		}
		nc, err := nats.Connect("", nats.InProcessServer(ns))
		if err != nil {
			t.Fatal(err)
		}
		return ns, nc
	}
	stop := func(ns *server.Server, nc *nats.Conn) {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
	}
	ns, nc := start()
	a := newRouter(t, nc, Config{IdleRooms: 1})
	id := a.claim(t, "/embedded")
	a.Close()
	stop(ns, nc)

	ns, nc = start()
	defer stop(ns, nc)
	b := newRouter(t, nc, Config{})
	if g := b.call(t, "GET", "/getRoomId?urlPath=/embedded", ""); g.str("id") != id {
		t.Errorf("after the restart: %d %s, want room %s", g.code, g.raw, id)
	}
}
