package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/stages"

	"github.com/beepvoice/router/internal/testutil"
)

// dialClose opens /connect as user/client, sends a message and returns the
// close frame the router answers with.
func dialClose(t *testing.T, r *testRouter, user, client, msg string) *websocket.CloseError {
	t.Helper()
	h := http.Header{}
	h.Set(claim.Header, `{"userid":"`+user+`","clientid":"`+client+`"}`)
	ws, _, err := websocket.DefaultDialer.Dial(r.wsURL(), h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("want a close frame, got %v", err)
			}
			return ce
		}
	}
}

func TestLimits(t *testing.T) {
	r := startRouter(t, map[string]string{
		"MAX_PEERS_PER_USER":         "1",
		"MAX_PEERS_PER_CONVERSATION": "2",
		"MAX_CONVERSATIONS":          "1",
		"JOIN_RATE":                  "0.001",
		"JOIN_BURST":                 "2",
	})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	r.dial("alice", beepclient.Options{Publish: true})
	r.dial("bob", beepclient.Options{Receive: 1})

	t.Run("devices per user", func(t *testing.T) {
		ce := dialClose(t, r, "alice", "laptop", "v=0")
		if ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "too many devices") {
			t.Fatalf("close %d %q", ce.Code, ce.Text)
		}
	})
	t.Run("devices per conversation", func(t *testing.T) {
		r.perms.allow("conv-1", "carol")
		r.dial("carol", beepclient.Options{Receive: 1}) // connects, belongs nowhere
		if code := r.join("carol", "conv-1"); code != http.StatusForbidden {
			t.Fatalf("join of a full conversation: %d, want 403", code)
		}
	})
	t.Run("conversations", func(t *testing.T) {
		r.perms.allow("conv-2", "dave")
		if code := r.join("dave", "conv-2"); code != http.StatusServiceUnavailable {
			t.Fatalf("join of a second conversation: %d, want 503", code)
		}
	})
	t.Run("join rate", func(t *testing.T) {
		// alice used one join; her burst is 2.
		if code := r.join("alice", "conv-1"); code != http.StatusOK {
			t.Fatalf("second join: %d", code)
		}
		if code := r.join("alice", "conv-1"); code != http.StatusTooManyRequests {
			t.Fatalf("third join: %d, want 429", code)
		}
	})
}

func TestSlowlorisIsCutOff(t *testing.T) {
	r := startRouter(t, map[string]string{"HTTP_READ_HEADER_TIMEOUT": "300ms"})
	c, err := net.Dial("tcp", r.a.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("POST /join/conv-1 HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	// The router must close the half-sent request by itself.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("router still holds a connection that never finished its headers")
		}
		break
	}
	// Meanwhile others are served.
	if code := r.join("nobody", "conv-1"); code != http.StatusUnauthorized {
		t.Fatalf("join during slowloris: %d", code)
	}
}

func TestOriginCheck(t *testing.T) {
	r := startRouter(t, map[string]string{"ALLOWED_ORIGINS": "https://app.beep.example"})
	tests := []struct {
		origin string
		want   int
	}{
		{"", http.StatusSwitchingProtocols},
		{"https://app.beep.example", http.StatusSwitchingProtocols},
		{"http://" + r.a.addr(), http.StatusSwitchingProtocols},
		{"https://evil.example", http.StatusForbidden},
	}
	for _, tt := range tests {
		h := http.Header{}
		h.Set(claim.Header, `{"userid":"u","clientid":"c"}`)
		if tt.origin != "" {
			h.Set("Origin", tt.origin)
		}
		ws, resp, _ := websocket.DefaultDialer.Dial(r.wsURL(), h)
		if ws != nil {
			ws.Close()
		}
		if resp == nil || resp.StatusCode != tt.want {
			t.Errorf("origin %q: %v, want %d", tt.origin, resp, tt.want)
		}
	}
	// CORS preflight for the allowed origin.
	req, _ := http.NewRequest(http.MethodOptions, r.url("/join/conv-1"), nil)
	req.Header.Set("Origin", "https://app.beep.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "https://app.beep.example" {
		t.Fatalf("preflight Access-Control-Allow-Origin %q", got)
	}
}

func TestJWTMode(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	path := filepath.Join(t.TempDir(), "auth.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startRouter(t, map[string]string{"AUTH_JWT_PUBLIC_KEY": path})
	r.perms.allow("conv-1", "alice")
	tok, err := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"userid": "alice", "clientid": "phone", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	// A forged X-User-Claim is not enough any more.
	if code := r.join("alice", "conv-1"); code != http.StatusUnauthorized {
		t.Fatalf("join with a forged claim: %d, want 401", code)
	}
	req, _ := http.NewRequest(http.MethodPost, r.url("/join/conv-1"), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("join with a token: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := beepclient.Dial(ctx, beepclient.Options{URL: r.wsURL() + "?token=" + tok, Claim: claim.Claim{UserID: "mallory", ClientID: "x"}, Publish: true})
	if err != nil {
		t.Fatalf("connect with ?token=: %v", err)
	}
	c.Close()
	if r.a.rooms.User("alice") == nil || r.a.rooms.User("mallory") != nil {
		t.Fatal("the connection was not made as the token's user")
	}
}

// panicker is a stage that panics on every packet of user "mallory".
type panicker struct{}

func (panicker) Open(t *room.Track, _ pipeline.Emit) (pipeline.Processor, error) {
	return panicProc{mallory: t.Claim().UserID == "mallory"}, nil
}
func (panicker) Close(context.Context) error { return nil }

type panicProc struct {
	pipeline.Nop
	mallory bool
}

func (p panicProc) HandlePacket(*pipeline.Packet) bool {
	if p.mallory {
		panic("a stage bug triggered by mallory")
	}
	return true
}

func TestPanicInStageIsContained(t *testing.T) {
	reg := pipeline.NewRegistry()
	stages.Register(reg)
	reg.Register(pipeline.Define("panicker", "panics on mallory's packets", struct{}{},
		func(pipeline.Env, string, *struct{}) (pipeline.Stage, error) { return panicker{}, nil }))
	p := newPerms(t)
	vars := map[string]string{
		"LISTEN": "127.0.0.1:0", "ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": p.srv.URL,
		"PIPELINE": writePipeline(t, "stages:\n  - name: permission-gate\n  - name: panicker\n  - name: forwarder\n"),
	}
	r := &testRouter{t: t, a: startApp(t, vars, reg), perms: p}
	for _, u := range []string{"alice", "bob", "mallory"} {
		r.mustJoin(u, "conv-1")
	}
	alice := r.dial("alice", beepclient.Options{Publish: true})
	bob := r.dial("bob", beepclient.Options{Receive: 2})
	mallory := r.dial("mallory", beepclient.Options{Publish: true})
	if err := pace(mallory, 'm', 0, 5, loud); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool { return r.a.rooms.Stats().Peers == 2 }); err != nil {
		t.Fatalf("mallory's peer was not closed: %+v", r.a.rooms.Stats())
	}
	if err := pace(alice, 'a', 0, 20, loud); err != nil {
		t.Fatal(err)
	}
	if err := bob.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['a'] >= 15
	}); err != nil {
		t.Fatalf("alice's call did not go on after mallory's panic: %v", err)
	}
}
