package origin

import (
	"net/http/httptest"
	"testing"
)

func TestPolicy(t *testing.T) {
	tests := []struct {
		allowed []string
		host    string
		origin  string
		want    bool
	}{
		{nil, "router.example.org", "", true},
		{nil, "router.example.org", "https://router.example.org", true},
		{nil, "router.example.org", "https://evil.example", false},
		{[]string{"https://app.beep.org"}, "router", "https://APP.beep.org", true},
		{[]string{"https://app.beep.org/"}, "router", "https://app.beep.org", true},
		{[]string{"https://app.beep.org"}, "router", "http://app.beep.org", false},
		{[]string{"*"}, "router", "https://anything", true},
		{nil, "router", "::not a url", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "http://"+tt.host+"/connect", nil)
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		if got := New(tt.allowed).Check(r); got != tt.want {
			t.Errorf("allowed %v, origin %q on %s: %v, want %v", tt.allowed, tt.origin, tt.host, got, tt.want)
		}
	}
}
