package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
)

const turnSecret = "turn-secret-for-tests-0123456789"

func TestTURNSettings(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string // "" for success
		check   func(t *testing.T, c turnConfig)
	}{
		{name: "off by default", check: func(t *testing.T, c turnConfig) {
			if c.Listen != "" || c.Realm != "beep" || c.TTL != 24*time.Hour || c.MinPort != 49152 || c.MaxPort != 65535 || c.MaxAllocationsPerUser != 8 || c.MaxAllocations != 1000 {
				t.Fatalf("defaults: %+v", c)
			}
		}},
		{name: "on", env: map[string]string{"TURN_LISTEN": ":3478", "TURN_SECRET": turnSecret, "TURN_PUBLIC_IP": "198.51.100.7", "TURN_RELAY_PORTS": "40000-40100", "TURN_TTL": "1h"}, check: func(t *testing.T, c turnConfig) {
			if c.Listen != ":3478" || c.PublicIP.String() != "198.51.100.7" || c.MinPort != 40000 || c.MaxPort != 40100 || c.TTL != time.Hour {
				t.Fatalf("turn: %+v", c)
			}
		}},
		{name: "listen IP is the relay IP", env: map[string]string{"TURN_LISTEN": "127.0.0.1:3478", "TURN_SECRET": turnSecret}},
		{name: "no secret", env: map[string]string{"TURN_LISTEN": "127.0.0.1:3478"}, wantErr: "TURN_SECRET"},
		{name: "short secret", env: map[string]string{"TURN_LISTEN": "127.0.0.1:3478", "TURN_SECRET": "hunter2"}, wantErr: "TURN_SECRET"},
		{name: "no relay IP", env: map[string]string{"TURN_LISTEN": ":3478", "TURN_SECRET": turnSecret}, wantErr: "TURN_PUBLIC_IP"},
		{name: "IPv6 relay IP", env: map[string]string{"TURN_LISTEN": ":3478", "TURN_SECRET": turnSecret, "TURN_PUBLIC_IP": "2001:db8::1"}, wantErr: "TURN_PUBLIC_IP"},
		{name: "host name", env: map[string]string{"TURN_LISTEN": "turn.example.org:3478", "TURN_SECRET": turnSecret}, wantErr: "TURN_LISTEN"},
		{name: "bad ports", env: map[string]string{"TURN_RELAY_PORTS": "5000-4000"}, wantErr: "TURN_RELAY_PORTS"},
		{name: "bad TTL", env: map[string]string{"TURN_TTL": "forever"}, wantErr: "TURN_TTL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := loadConfig(func(k string) string { return tc.env[k] }, false)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.check != nil {
					tc.check(t, c.TURN)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
			}
			if s := tc.env["TURN_SECRET"]; s != "" && strings.Contains(err.Error(), s) {
				t.Errorf("the error quotes the secret: %v", err)
			}
		})
	}
}

// iceServers asks the router's GET /ice-servers as user.
func iceServers(t *testing.T, r *testRouter, user string) []webrtc.ICEServer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.url("/ice-servers"), nil)
	b, _ := json.Marshal(claim.Claim{UserID: user, ClientID: user + "-phone"})
	req.Header.Set(claim.Header, string(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var list []struct {
		URLs       []string `json:"urls"`
		Username   string   `json:"username"`
		Credential string   `json:"credential"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ice-servers: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	out := make([]webrtc.ICEServer, len(list))
	for i, s := range list {
		out[i] = webrtc.ICEServer{URLs: s.URLs, Username: s.Username, Credential: s.Credential}
	}
	return out
}

// TestTURNRelayOnly: two pion clients that may use relay candidates only
// reach the router through its built-in TURN server on 127.0.0.1, with the
// credentials GET /ice-servers gave them, and one hears the other. Without
// TURN_LISTEN the list is empty.
func TestTURNRelayOnly(t *testing.T) {
	if got := iceServers(t, startRouter(t, nil), "alice"); len(got) != 0 {
		t.Fatalf("without TURN_LISTEN, /ice-servers lists %v", got)
	}

	r := startRouter(t, map[string]string{
		"TURN_LISTEN":      "127.0.0.1:0",
		"TURN_SECRET":      turnSecret,
		"TURN_RELAY_PORTS": "40000-60000",
		// A pion client nominates a relay pair only after 2 s (its relay
		// acceptance wait); the router's ICE must not give up before.
		"ICE_DISCONNECTED_TIMEOUT": "3s",
	})
	servers := iceServers(t, r, "alice")
	if len(servers) != 1 || !strings.HasPrefix(servers[0].URLs[0], "turn:127.0.0.1:") || !strings.HasSuffix(servers[0].Username, ":alice") {
		t.Fatalf("/ice-servers: %+v", servers)
	}
	r.mustJoin("alice", "conv-turn")
	r.mustJoin("bob", "conv-turn")
	a := r.dial("alice", beepclient.Options{Publish: true, ICEServers: servers, RelayOnly: true})
	b := r.dial("bob", beepclient.Options{Receive: 1, ICEServers: iceServers(t, r, "bob"), RelayOnly: true})

	// Speak until bob has heard 25 packets, within a deadline.
	heardEnough := make(chan error, 1)
	go func() {
		heardEnough <- b.WaitFor(deadline(t, 15*time.Second), func(rx map[string][]beepclient.Packet) bool {
			n, _ := heard(rx)
			return n['a'] >= 25
		})
	}()
	for i := 0; ; i += 10 {
		if err := pace(a, 'a', i, 10, loud); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-heardEnough:
			if err != nil {
				t.Fatalf("bob does not hear alice through TURN: %v", err)
			}
		default:
			continue
		}
		break
	}

	// Both went through relays: two allocations (a client on 127.0.0.1
	// has one local address), and relayed bytes both ways.
	_, body := scrape(t, r.url("/metrics"))
	if got := metric(t, body, "router_turn_allocations"); got != 2 {
		t.Errorf("router_turn_allocations %v, want 2", got)
	}
	for _, dir := range []string{"in", "out"} {
		if got := metric(t, body, `router_turn_relayed_bytes_total{direction="`+dir+`"}`); got < 25*20 {
			t.Errorf("relayed bytes %s: %v", dir, got)
		}
	}
	t.Logf("relayed through TURN: %v bytes from peers, %v to peers",
		metric(t, body, `router_turn_relayed_bytes_total{direction="in"}`), metric(t, body, `router_turn_relayed_bytes_total{direction="out"}`))
}
