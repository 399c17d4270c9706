package beep

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/mux"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name, in string
		kind     int
		sdp      string
		cand     string
		err      bool
	}{
		{"bare", "v=0\r\n", kindBareOffer, "v=0\r\n", "", false},
		{"framed", "offer::v=0\r\n", kindFramedOffer, "v=0\r\n", "", false},
		{"ice json", `ice::{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}`, kindICE, "", "candidate:1 1 udp 1 127.0.0.1 5000 typ host", false},
		{"ice line", "ice::candidate:1 1 udp 1 127.0.0.1 5000 typ host", kindICE, "", "candidate:1 1 udp 1 127.0.0.1 5000 typ host", false},
		{"ice a= line", "ice::a=candidate:1 1 udp 1 127.0.0.1 5000 typ host", kindICE, "", "candidate:1 1 udp 1 127.0.0.1 5000 typ host", false},
		{"end of candidates", "ice::", kindICE, "", "", false},
		{"ice garbage", "ice::hello", 0, "", "", true},
		{"ice bad json", "ice::{", 0, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseMessage(tt.in)
			if (err != nil) != tt.err {
				t.Fatalf("err %v", err)
			}
			if err != nil {
				return
			}
			if m.kind != tt.kind || m.sdp != tt.sdp || m.candidate.Candidate != tt.cand {
				t.Fatalf("got %+v", m)
			}
		})
	}
}

func TestValidConversationID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"normal", "c-1", true},
		{"non-ASCII printable", "émoji ✓", true},
		{"longest", strings.Repeat("x", 256), true},
		{"empty", "", false},
		{"too long", strings.Repeat("x", 257), false},
		{"NUL", "a\x00b", false},
		{"newline", "a\nb", false},
		{"escape", "\x1b[31m", false},
		{"invalid UTF-8", "\xff", false},
		{"invalid UTF-8 inside", "c-\xc3(", false},
		{"line separator", "a\u2028b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := validConversationID(tt.id); got != tt.want {
				t.Fatalf("validConversationID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

// nopSink refuses every track; the join tests publish none.
type nopSink struct{}

func (nopSink) Open(*room.Track) (rtc.TrackSink, error) { return nil, errors.New("unused") }

// TestJoinRefusesBadInput sends real requests to /join and /connect of a
// real Server, whose permissions.Client asks a real permission service:
// bad ids never reach the permission service or the rooms, and a
// permission service that redirects (here to a page that answers 200) is
// a check that cannot be made: 503, logged once with the status.
func TestJoinRefusesBadInput(t *testing.T) {
	var asked, followed atomic.Int32
	pmux := http.NewServeMux()
	pmux.HandleFunc("/welcome", func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	pmux.HandleFunc("/user/{user}/conversation/{conv}", func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		if r.PathValue("conv") == "redirected" {
			http.Redirect(w, r, "/welcome", http.StatusFound)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	perms := httptest.NewServer(pmux)
	defer perms.Close()
	checker, err := permissions.NewClient(perms.URL, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rooms, err := room.New(room.Config{Sink: nopSink{}})
	if err != nil {
		t.Fatal(err)
	}
	defer rooms.Close(context.Background())
	logs := &testutil.Buffer{}
	r := mux.NewRouter()
	New(Config{
		Rooms:       rooms,
		Permissions: checker,
		Logger:      slog.New(slog.NewTextHandler(logs, nil)),
	}).Register(r)
	srv := httptest.NewServer(r)
	defer srv.Close()

	const good = `{"userid":"zoë","clientid":"phone"}`
	tests := []struct {
		name   string
		method string
		path   string
		claim  string
		code   int
		asks   int32 // permission checks made
		body   string
	}{
		{"join ok", http.MethodPost, "/join/c-1", good, http.StatusOK, 1, ""},
		{"join redirected permission check", http.MethodPost, "/join/redirected", good, http.StatusServiceUnavailable, 1, "permission service unavailable"},
		{"conversation id invalid UTF-8", http.MethodPost, "/join/c%FF", good, http.StatusBadRequest, 0, "bad conversation id"},
		{"conversation id with escape", http.MethodPost, "/join/%1B%5B31m", good, http.StatusBadRequest, 0, "bad conversation id"},
		{"conversation id with NUL", http.MethodPost, "/join/c%00", good, http.StatusBadRequest, 0, "bad conversation id"},
		{"conversation id with newline", http.MethodPost, "/join/c%0Ad", good, http.StatusBadRequest, 0, "bad conversation id"},
		{"join userid with NUL", http.MethodPost, "/join/c-1", `{"userid":"u\u0000","clientid":"c"}`, http.StatusBadRequest, 0, "userid is not a valid id"},
		{"join userid with newline", http.MethodPost, "/join/c-1", `{"userid":"u\n","clientid":"c"}`, http.StatusBadRequest, 0, "userid is not a valid id"},
		{"join clientid with escape", http.MethodPost, "/join/c-1", `{"userid":"u","clientid":"\u001b[31m"}`, http.StatusBadRequest, 0, "clientid is not a valid id"},
		{"join userid too long", http.MethodPost, "/join/c-1", `{"userid":"` + strings.Repeat("u", 257) + `","clientid":"c"}`, http.StatusBadRequest, 0, "userid is not a valid id"},
		{"connect clientid with NUL", http.MethodGet, "/connect", `{"userid":"u","clientid":"c\u0000"}`, http.StatusBadRequest, 0, "clientid is not a valid id"},
		{"connect userid with bidi override", http.MethodGet, "/connect", `{"userid":"\u202eu","clientid":"c"}`, http.StatusBadRequest, 0, "userid is not a valid id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := asked.Load()
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set(claim.Header, tt.claim)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.code || !strings.Contains(string(body), tt.body) {
				t.Fatalf("%s %s: got %d %q, want %d %q", tt.method, tt.path, resp.StatusCode, body, tt.code, tt.body)
			}
			if n := asked.Load() - before; n != tt.asks {
				t.Fatalf("%s %s: %d permission checks, want %d", tt.method, tt.path, n, tt.asks)
			}
		})
	}
	if n := followed.Load(); n != 0 {
		t.Fatalf("the permission client followed %d redirects", n)
	}
	out := logs.String()
	if n := strings.Count(out, "status 302"); n != 1 {
		t.Fatalf("the redirect is logged %d times, want once with its status; logs:\n%s", n, out)
	}
	if strings.Contains(out, `"userid"`) || strings.Contains(out, "welcome") {
		t.Fatalf("logs carry the claim header or the redirect target:\n%s", out)
	}
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{"offer::v=0", `ice::{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host"}`, "ice::candidate:x", "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseMessage(s)
		if err == nil && m.kind == kindICE && !strings.HasPrefix(s, icePrefix) {
			t.Fatalf("ice from %q", s)
		}
	})
}

func TestLimiter(t *testing.T) {
	l := newLimiter(2, 3) // 2 per second, bursts of 3
	t0 := time.Unix(1000, 0)
	steps := []struct {
		user string
		at   time.Duration
		want bool
	}{
		{"a", 0, true}, {"a", 0, true}, {"a", 0, true}, {"a", 0, false}, // burst spent
		{"b", 0, true},                      // others unaffected
		{"a", 500 * time.Millisecond, true}, // one token back
		{"a", 500 * time.Millisecond, false},
		{"a", 2 * time.Minute, true}, // swept and refilled
	}
	for i, s := range steps {
		if got := l.allow(s.user, t0.Add(s.at)); got != s.want {
			t.Fatalf("step %d: allow(%s) = %v", i, s.user, got)
		}
	}
	if len(l.users) != 1 {
		t.Fatalf("%d buckets after the sweep, want 1", len(l.users))
	}
	if !newLimiter(0, 0).allow("x", t0) {
		t.Fatal("zero rate limits")
	}
}
