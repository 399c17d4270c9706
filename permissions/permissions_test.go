package permissions

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestClientCheck(t *testing.T) {
	var gotPath string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath = r.URL.EscapedPath()
		switch {
		case r.URL.Path == "/user/u-ok/conversation/c 1":
			w.WriteHeader(http.StatusOK)
		case r.URL.Path == "/user/u-no/conversation/c":
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/user/u-forbidden/conversation/c":
			w.WriteHeader(http.StatusForbidden)
		case r.URL.Path == "/user/u-slow/conversation/c":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL+"/", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		user, conv string
		want       error
	}{
		{"u-ok", "c 1", nil},
		{"u-no", "c", ErrDenied},
		{"u-forbidden", "c", ErrDenied},
		{"u-broken", "c", ErrUnavailable},
		{"u-slow", "c", ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			err := c.Check(context.Background(), tt.user, tt.conv)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Check(%s, %s) = %v, want %v", tt.user, tt.conv, err, tt.want)
			}
		})
	}
	if err := c.Check(context.Background(), "u-ok", "c 1"); err != nil || gotPath != "/user/u-ok/conversation/c%201" {
		t.Fatalf("path escaping: %v %q", err, gotPath)
	}

	dead, _ := NewClient("http://127.0.0.1:1", time.Second)
	if err := dead.Check(context.Background(), "u", "c"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("dead service: %v, want ErrUnavailable", err)
	}
}

func TestNewClientRejectsBadHost(t *testing.T) {
	for _, h := range []string{"", "permissions", "ftp://x", "http://"} {
		if _, err := NewClient(h, 0); err == nil {
			t.Errorf("NewClient(%q) accepted", h)
		}
	}
}
