package permissions

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestClientCheck(t *testing.T) {
	// gotPath is shared with the server's handler goroutines: the race
	// detector does not see the TCP round trip as synchronisation.
	var gotPath atomic.Value
	gotPath.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotPath.Store(r.URL.EscapedPath())
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
	if err := c.Check(context.Background(), "u-ok", "c 1"); err != nil || gotPath.Load() != "/user/u-ok/conversation/c%201" {
		t.Fatalf("path escaping: %v %q", err, gotPath.Load())
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

// TestClientDoesNotFollowRedirects: a redirect from the permission service
// to any page that answers 200 must not let the user in. The check cannot
// be made, so it fails closed as unavailable, naming the status.
func TestClientDoesNotFollowRedirects(t *testing.T) {
	var followed atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/welcome", func(w http.ResponseWriter, r *http.Request) {
		followed.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/user/{user}/conversation/{conv}", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.PathValue("user"))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		http.Redirect(w, r, "/welcome", code)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c, err := NewClient(srv.URL, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		code int
	}{
		{"301 moved permanently", http.StatusMovedPermanently},
		{"302 found", http.StatusFound},
		{"303 see other", http.StatusSeeOther},
		{"307 temporary redirect", http.StatusTemporaryRedirect},
		{"308 permanent redirect", http.StatusPermanentRedirect},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := c.Check(context.Background(), strconv.Itoa(tt.code), "c")
			if !errors.Is(err, ErrUnavailable) {
				t.Fatalf("redirect %d: Check = %v, want ErrUnavailable (the check cannot be made)", tt.code, err)
			}
			if want := "status " + strconv.Itoa(tt.code); !strings.Contains(err.Error(), want) {
				t.Fatalf("redirect %d: error %q does not name %q", tt.code, err, want)
			}
		})
	}
	if n := followed.Load(); n != 0 {
		t.Fatalf("the client followed %d redirects", n)
	}
}
