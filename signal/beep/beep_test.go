package beep

import (
	"strings"
	"testing"
	"time"
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
	for id, ok := range map[string]bool{"c-1": true, "": false, strings.Repeat("x", 257): false, "a\x00b": false, "émoji ✓": true} {
		if validConversationID(id) != ok {
			t.Errorf("validConversationID(%q) = %v", id, !ok)
		}
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
