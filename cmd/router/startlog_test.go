package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// TestStartupLog runs the binary and reads its log: the settings -dev
// overrides or keeps, where to go, the ICE addresses, and an unreachable
// external NATS named without its credentials, with its retry.
func TestStartupLog(t *testing.T) {
	bin := buildRouter(t)
	const secret = "s3cr3t-pass"
	closed := testutil.FreeAddr(t) // nothing listens there

	tests := []struct {
		name string
		args []string
		env  map[string]string
		want [][]string // each: the parts of one line
	}{
		{
			name: "-dev overrides",
			args: []string{"-dev"},
			env:  map[string]string{"NATS": "nats://beep:" + secret + "@" + closed, "ALLOWED_ORIGINS": "https://app.example.org", "ICE_IPS": "127.0.0.1"},
			want: [][]string{
				{"level=WARN", "-dev overrides a setting", "setting=NATS", "nats://redacted@" + closed},
				{"-dev keeps a setting", "setting=LISTEN"},
				{"-dev keeps a setting", "setting=ALLOWED_ORIGINS", "https://app.example.org"},
				{"open http://{addr}/"},
				{"ICE addresses announced to clients", "addresses=127.0.0.1"},
			},
		},
		{
			name: "-dev-tls",
			args: []string{"-dev", "-dev-tls"},
			env:  map[string]string{"ICE_IPS": "127.0.0.1"},
			want: [][]string{
				{"open https://{addr}/"},
				{"level=WARN", "ICE addresses are loopback only"},
			},
		},
		{
			name: "unreachable NATS",
			env:  map[string]string{"NATS": "nats://beep:" + secret + "@" + closed, "CLUSTER": "off", "ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": "allow-all"},
			want: [][]string{
				{"level=WARN", "NATS unreachable at start", "url=nats://redacted@" + closed, "retry_every=1s"},
				{"level=WARN", "NATS unreachable: retrying", "url=nats://redacted@" + closed},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := testutil.FreeAddr(t)
			env := map[string]string{"LISTEN": addr}
			for k, v := range tt.env {
				env[k] = v
			}
			c := runChild(t, append([]string{bin}, tt.args...), env)
			for _, parts := range tt.want {
				for i := range parts {
					parts[i] = strings.ReplaceAll(parts[i], "{addr}", addr)
				}
				c.waitLine(0, 20*time.Second, parts...)
			}
			if strings.Contains(c.log(), secret) {
				t.Errorf("the log shows the NATS password:\n%s", c.log())
			}
		})
	}
}

// TestICEAddresses: the addresses announced, and the warning when clients
// cannot use them.
func TestICEAddresses(t *testing.T) {
	lo, lan := net.ParseIP("127.0.0.1"), net.ParseIP("192.168.1.20")
	tests := []struct {
		name   string
		cfg    config
		host   []net.IP
		want   string
		warned string
	}{
		{"host addresses", config{}, []net.IP{lo, lan}, "192.168.1.20", ""},
		{"only loopback", config{}, []net.IP{lo}, "", "no usable ICE address"},
		{"ICE_IPS loopback", config{ICEIPs: []net.IP{lo}}, []net.IP{lo, lan}, "127.0.0.1", ""},
		{"ICE_IPS loopback with -dev-tls", config{ICEIPs: []net.IP{lo}, DevTLS: true}, []net.IP{lo, lan}, "127.0.0.1", "loopback only"},
		{"ICE_IPS not the host's", config{ICEIPs: []net.IP{net.ParseIP("10.9.9.9")}}, []net.IP{lo, lan}, "", "no address of ICE_IPS"},
		{"ICE_IPS partly the host's", config{ICEIPs: []net.IP{net.ParseIP("10.9.9.9"), lan}}, []net.IP{lo, lan}, "192.168.1.20", "10.9.9.9 is not an address of this host"},
		{"PUBLIC_IPS", config{PublicIPs: []string{"203.0.113.7"}}, []net.IP{lo, lan}, "203.0.113.7", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, warn := iceAddresses(tt.cfg, tt.host)
			if strings.Join(got, ",") != tt.want {
				t.Errorf("announced %v, want %q", got, tt.want)
			}
			if tt.warned == "" && warn != "" || !strings.Contains(warn, tt.warned) {
				t.Errorf("warning %q, want one containing %q", warn, tt.warned)
			}
		})
	}
}

// TestPeerFailureLogged: a peer that does not connect logs why, at info,
// once: no candidate from the client, candidates that never answer, or a
// connected client that went silent.
func TestPeerFailureLogged(t *testing.T) {
	bin := buildRouter(t)
	addr := testutil.FreeAddr(t)
	c := runChild(t, []string{bin}, map[string]string{
		"LISTEN": addr, "ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": "allow-all",
		"CONNECT_TIMEOUT": "2s", "ICE_DISCONNECTED_TIMEOUT": "1s", "ICE_FAILED_TIMEOUT": "1s", "ICE_KEEPALIVE": "250ms",
	})
	c.waitLine(0, 20*time.Second, "router listening")
	offer := audioOffer(t)
	// A UDP port nobody answers on: connectivity checks to it fail.
	dead := testutil.FreeUDPPort(t)
	withCandidate := strings.Replace(offer, "a=mid:0\r\n", fmt.Sprintf("a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 %d typ host\r\n", dead), 1)
	if withCandidate == offer {
		t.Fatal("offer has no a=mid:0 line to add a candidate to")
	}

	tests := []struct {
		name  string
		offer string
		why   string
	}{
		{"no candidate", offer, "the client gave no usable ICE candidate"},
		{"unanswered candidate", withCandidate, "no connectivity check succeeded with the client's 1 candidates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			user := "u-" + strings.ReplaceAll(tt.name, " ", "-")
			ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/connect", claimHeader(user, "phone"))
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			if err := ws.WriteMessage(websocket.TextMessage, []byte(tt.offer)); err != nil {
				t.Fatal(err)
			}
			_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, _, err := ws.ReadMessage(); err != nil {
				t.Fatalf("no answer: %v", err)
			}
			// The socket closes when the peer does.
			_, _, err = ws.ReadMessage()
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("socket ended with %v, want a close frame", err)
			}
			line, i := c.waitLine(0, 10*time.Second, "user="+user, "level=INFO", "why=", tt.why)
			t.Log(line)
			assertOnce(t, c, i, user)
		})
	}

	t.Run("went silent", func(t *testing.T) {
		user := "u-silent"
		cl, err := beepclient.Dial(deadline(t, 20*time.Second), beepclient.Options{URL: "ws://" + addr + "/connect", Claim: claim.Claim{UserID: user, ClientID: "phone"}, Publish: true, Receive: 1})
		if err != nil {
			t.Fatal(err)
		}
		_, from := c.waitLine(0, 10*time.Second, "user="+user, "peer connected")
		cl.Close() // pion ignores DTLS close_notify: the router sees silence
		line, i := c.waitLine(from, 15*time.Second, "user="+user, "level=INFO", "peer connection failed", "went silent")
		t.Log(line)
		assertOnce(t, c, i, user)
	})
}

// assertOnce fails the test if the child logged why user's peer failed
// more than once (line i is the one).
func assertOnce(t *testing.T, c *child, i int, user string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for j, l := range c.lines {
		if j != i && strings.Contains(l, "user="+user) && strings.Contains(l, "why=") {
			t.Errorf("why logged twice: %q and %q", c.lines[i], l)
		}
	}
}
