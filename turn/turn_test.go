package turn

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/logging"
	pionturn "github.com/pion/turn/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/rtc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const secret = "test-secret-0123456789"

// newServer starts a TURN server on 127.0.0.1 whose relays may reach
// loopback (as the router's when ICE_IPS has 127.0.0.1) but not the other
// default forbidden networks.
func newServer(t *testing.T, perUser, total int) *Server {
	t.Helper()
	s, err := New(Config{
		Listen:                "127.0.0.1:0",
		Secret:                secret,
		MaxAllocationsPerUser: perUser,
		MaxAllocations:        total,
		Forbidden:             rtc.DefaultForbiddenNetworks([]net.IP{net.IPv4(127, 0, 0, 1)}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// client is a pion TURN client on 127.0.0.1.
type client struct {
	c     *pionturn.Client
	conn  net.PacketConn
	relay net.PacketConn
}

// dial makes a TURN client with the given credential and allocates.
func dial(t *testing.T, s *Server, username, password string) (*client, error) {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := pionturn.NewClient(&pionturn.ClientConfig{
		TURNServerAddr: s.Addr().String(),
		Conn:           conn,
		Username:       username,
		Password:       password,
		Realm:          DefaultRealm,
		LoggerFactory:  logging.NewDefaultLoggerFactory(),
	})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	cl := &client{c: c, conn: conn}
	t.Cleanup(cl.close)
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	cl.relay, err = c.Allocate()
	return cl, err
}

func (cl *client) close() {
	if cl.relay != nil {
		_ = cl.relay.Close()
		cl.relay = nil
	}
	cl.c.Close()
	_ = cl.conn.Close()
}

// waitAllocations waits until the server counts n live allocations.
func waitAllocations(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for s.Allocations() != n {
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("%d live allocations, want %d", s.Allocations(), n)
		}
	}
}

func TestCredentials(t *testing.T) {
	s := newServer(t, 0, 0)
	now := time.Now()
	fresh := func(user string) (string, string) { return Credentials(secret, user, now.Add(time.Hour)) }
	good, goodPass := fresh("u-1")
	expired, expiredPass := Credentials(secret, "u-1", now.Add(-time.Minute))
	otherSecret, otherPass := Credentials("another-secret-456789", "u-1", now.Add(time.Hour))
	cases := []struct {
		name               string
		username, password string
		ok                 bool
		counter            string // the refusal counted, if any
	}{
		{"fresh credential", good, goodPass, true, ""},
		{"wrong password", good, "AAAA" + goodPass[4:], false, ""},
		{"password of another secret", otherSecret, otherPass, false, ""},
		{"expired", expired, expiredPass, false, "expired"},
		{"no expiry", "u-1", goodPass, false, "auth"},
		{"no user", strings.Split(good, ":")[0] + ":", goodPass, false, "auth"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := refusals(t, s)
			cl, err := dial(t, s, tc.username, tc.password)
			if tc.ok != (err == nil) {
				t.Fatalf("allocate: err %v, want ok %v", err, tc.ok)
			}
			if tc.counter != "" && refusals(t, s)[tc.counter] != before[tc.counter]+1 {
				t.Errorf("refusal %q counted %v times, was %v", tc.counter, refusals(t, s)[tc.counter], before[tc.counter])
			}
			cl.close()
		})
	}
	// The user's part of an issued credential is the user; the password
	// is HMAC-SHA1 as the TURN REST convention has it.
	u, p, exp := s.Credentials("u-9")
	if want, _ := Credentials(secret, "u-9", exp); u != want || !strings.HasSuffix(u, ":u-9") {
		t.Errorf("issued username %q", u)
	}
	if exp.Before(now.Add(DefaultTTL-time.Minute)) || exp.After(now.Add(DefaultTTL+time.Minute)) {
		t.Errorf("expires %v, want about now + %v", exp, DefaultTTL)
	}
	if _, err := dial(t, s, u, p); err != nil {
		t.Errorf("issued credential refused: %v", err)
	}
}

// TestRelay relays to a peer on loopback and back, and refuses peers in a
// forbidden network: the metadata service and link-local.
func TestRelay(t *testing.T) {
	s := newServer(t, 0, 0)
	u, p, _ := s.Credentials("u-1")
	cl, err := dial(t, s, u, p)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()

	if _, err := cl.relay.WriteTo([]byte("hello"), peer.LocalAddr()); err != nil {
		t.Fatalf("relay to an allowed peer: %v", err)
	}
	buf := make([]byte, 1500)
	_ = peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("peer read %q from %v: %v", buf[:n], from, err)
	}
	if from.String() != cl.relay.LocalAddr().String() {
		t.Errorf("peer got it from %v, want the relay address %v", from, cl.relay.LocalAddr())
	}
	if _, err := peer.WriteTo([]byte("back"), from); err != nil {
		t.Fatal(err)
	}
	_ = cl.relay.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, _, err = cl.relay.ReadFrom(buf); err != nil || string(buf[:n]) != "back" {
		t.Fatalf("client read %q: %v", buf[:n], err)
	}

	for _, to := range []string{"169.254.169.254:80", "169.254.1.1:9", "0.0.0.0:9", "224.0.0.1:9"} {
		t.Run("forbidden "+to, func(t *testing.T) {
			before := refusals(t, s)["forbidden_peer"]
			addr, _ := net.ResolveUDPAddr("udp4", to)
			if _, err := cl.relay.WriteTo([]byte("probe"), addr); err == nil {
				t.Fatalf("relay to %s allowed", to)
			}
			if got := refusals(t, s)["forbidden_peer"]; got != before+1 {
				t.Errorf("forbidden_peer %v, want %v", got, before+1)
			}
		})
	}
}

// TestRelaySocketRefusesForbidden: the relay socket itself refuses
// forbidden destinations, whatever pion asks of it.
func TestRelaySocketRefusesForbidden(t *testing.T) {
	s, err := New(Config{Listen: "127.0.0.1:0", Secret: secret, Forbidden: rtc.DefaultForbiddenNetworks(nil)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	inner, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.reserve("u")
	rc := &relayConn{PacketConn: inner, s: s, user: "u"}
	defer rc.Close()
	cases := []struct {
		to   string
		want error
	}{
		{"127.0.0.1:9", errForbiddenPeer}, // loopback: ICE does not use it here
		{"169.254.169.254:80", errForbiddenPeer},
		{"[::ffff:169.254.169.254]:80", errForbiddenPeer},
	}
	for _, tc := range cases {
		addr, _ := net.ResolveUDPAddr("udp", tc.to)
		if _, err := rc.WriteTo([]byte("x"), addr); !errors.Is(err, tc.want) {
			t.Errorf("write to %s: %v, want %v", tc.to, err, tc.want)
		}
	}
	if got := refusals(t, s)["forbidden_send"]; got != float64(len(cases)) {
		t.Errorf("forbidden_send %v, want %d", got, len(cases))
	}
}

// TestAllocationQuotas: at most 2 allocations per user and 3 in all; a
// closed allocation frees its place.
func TestAllocationQuotas(t *testing.T) {
	s := newServer(t, 2, 3)
	alloc := func(user string) (*client, error) {
		u, p, _ := s.Credentials(user)
		return dial(t, s, u, p)
	}
	steps := []struct {
		user string
		ok   bool
		live int
	}{
		{"ada", true, 1},
		{"ada", true, 2},
		{"ada", false, 2}, // per user
		{"bob", true, 3},
		{"cat", false, 3}, // in total
	}
	var first *client
	for i, st := range steps {
		cl, err := alloc(st.user)
		if st.ok != (err == nil) {
			t.Fatalf("step %d (%s): allocate err %v, want ok %v", i, st.user, err, st.ok)
		}
		if i == 0 {
			first = cl
		}
		if got := s.Allocations(); got != st.live {
			t.Fatalf("step %d: %d live, want %d", i, got, st.live)
		}
	}
	r := refusals(t, s)
	if r["quota_user"] != 1 || r["quota_total"] != 1 {
		t.Errorf("refusals %v", r)
	}
	first.close() // refreshes with lifetime 0: the allocation ends
	waitAllocations(t, s, 2)
	if _, err := alloc("cat"); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

func TestICEServersHandler(t *testing.T) {
	s := newServer(t, 0, 0)
	cases := []struct {
		name    string
		srv     *Server
		query   string
		status  int
		servers int
	}{
		{"configured", s, "?userid=u-1&clientid=c-1", http.StatusOK, 1},
		{"not configured", nil, "?userid=u-1&clientid=c-1", http.StatusOK, 0},
		{"no claim", s, "", http.StatusBadRequest, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			ICEServersHandler(tc.srv, claim.FromHeaderOrQuery).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ice-servers"+tc.query, nil))
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status != http.StatusOK {
				return
			}
			var list []iceServer
			if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
				t.Fatal(err)
			}
			if len(list) != tc.servers {
				t.Fatalf("%d servers: %s", len(list), rec.Body)
			}
			if rec.Header().Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q", rec.Header().Get("Cache-Control"))
			}
			if tc.servers == 0 {
				return
			}
			got := list[0]
			if len(got.URLs) != 1 || got.URLs[0] != "turn:"+s.Addr().String()+"?transport=udp" || !strings.HasSuffix(got.Username, ":u-1") {
				t.Errorf("server %+v", got)
			}
			// The credential works.
			if _, err := dial(t, s, got.Username, got.Credential); err != nil {
				t.Errorf("credential from /ice-servers refused: %v", err)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no secret", Config{Listen: "127.0.0.1:0"}, "secret"},
		{"no relay IP", Config{Listen: ":0", Secret: secret}, "relay address"},
		{"IPv6 relay", Config{Listen: ":0", Secret: secret, PublicIP: net.ParseIP("2001:db8::1")}, "IPv4"},
		{"bad ports", Config{Listen: "127.0.0.1:0", Secret: secret, MinPort: 6000, MaxPort: 5000}, "relay ports"},
		{"name", Config{Listen: "localhost:0", Secret: secret}, "IP address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.cfg)
			if err == nil {
				s.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want it to name %q", err, tc.want)
			}
		})
	}
}

// TestSecretNotLogged: starting and serving logs nothing of the secret.
func TestSecretNotLogged(t *testing.T) {
	var buf testutil.Buffer
	s, err := New(Config{Listen: "127.0.0.1:0", Secret: secret, Forbidden: []netip.Prefix{}, Logger: newTestLogger(&buf)})
	if err != nil {
		t.Fatal(err)
	}
	u, p, _ := s.Credentials("u-1")
	if _, err := dial(t, s, u, "wrong"); err == nil {
		t.Error("a wrong password was accepted")
	}
	if _, err := dial(t, s, u, p); err != nil {
		t.Error(err)
	}
	s.Close()
	if strings.Contains(buf.String(), secret) || strings.Contains(buf.String(), p) {
		t.Errorf("the log has the secret or a password:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "TURN server listening") {
		t.Errorf("log:\n%s", buf.String())
	}
}

// refusals reads the refusal counters through the Prometheus collector.
func refusals(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := reg.Register(s.Collector()); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "router_turn_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			out[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
		}
	}
	return out
}
