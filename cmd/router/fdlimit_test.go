package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// TestFDBudget: the shares of the descriptor limit.
func TestFDBudget(t *testing.T) {
	tests := []struct {
		limit                   uint64
		httpConns, sock, extras int
	}{
		{0, 0, 0, 32}, // unknown or unlimited: no bound
		{160, 80, 48, 4},
		{1024, 512, 307, 25},
		{1 << 20, 1 << 19, 314572, 32},
	}
	for _, tt := range tests {
		b := newFDBudget(tt.limit)
		if b.httpConns != tt.httpConns || b.iceSockets != tt.sock || b.extras != tt.extras {
			t.Errorf("limit %d: %d HTTP connections, %d ICE sockets, %d extras; want %d, %d, %d", tt.limit, b.httpConns, b.iceSockets, b.extras, tt.httpConns, tt.sock, tt.extras)
		}
		// The extras: METRICS_LISTEN and the refusals in progress on
		// both listeners; a few descriptors (at least 12 at start) must
		// be left besides.
		if tt.limit > 0 && uint64(b.httpConns+b.iceSockets+3*b.extras+12) > tt.limit {
			t.Errorf("limit %d: the shares and the bounded extras do not fit", tt.limit)
		}
	}
}

// TestFDHeadroom runs the binary with RLIMIT_NOFILE lowered to 160
// (prlimit): it logs the limit and its shares, refuses new peers (1013)
// before their ICE sockets pass their share and new HTTP connections (503
// with Retry-After) past theirs, never running out of descriptors, while
// an established call goes on and /healthz answers on METRICS_LISTEN; once
// connections close, new ones are served again. ICE_SOCKETS=per-peer: the
// default shared socket needs no socket per peer.
func TestFDHeadroom(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("needs prlimit (Debian util-linux)")
	}
	const limit = 160
	budget := newFDBudget(limit)
	bin := buildRouter(t)
	addr, metricsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	c := runChild(t, []string{prlimit, fmt.Sprintf("--nofile=%d:%d", limit, limit), bin}, map[string]string{
		"LISTEN": addr, "METRICS_LISTEN": metricsAddr, "ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": "allow-all",
		"CONNECT_TIMEOUT": "120s", "ICE_DISCONNECTED_TIMEOUT": "2s", "ICE_FAILED_TIMEOUT": "2s", "ICE_KEEPALIVE": "250ms",
		"MAX_PEERS_PER_USER": "0", "CONNECT_MAX_PENDING_PER_ADDR": "0", "ICE_SOCKETS": "per-peer",
	})
	line, _ := c.waitLine(0, 20*time.Second, "file descriptor limit")
	if logValue(line, "limit") != strconv.Itoa(limit) || logValue(line, "http_connections") != strconv.Itoa(budget.httpConns) || logValue(line, "ice_sockets") != strconv.Itoa(budget.iceSockets) {
		t.Errorf("limit logged as %q, want limit=%d http_connections=%d ice_sockets=%d", line, limit, budget.httpConns, budget.iceSockets)
	}
	c.waitLine(0, 20*time.Second, "router listening")
	base := fdCount(t, c)
	healthy := func(what string) {
		t.Helper()
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + metricsAddr + "/healthz")
		if err != nil {
			t.Fatalf("%s: /healthz on METRICS_LISTEN: %v", what, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: /healthz on METRICS_LISTEN: %d", what, resp.StatusCode)
		}
	}

	// An established call.
	for _, u := range []string{"u-a", "u-b"} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/join/c-fd", nil)
		setClaim(req, u, u+"-phone")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("join %s: %d", u, resp.StatusCode)
		}
	}
	dial := func(user string) *beepclient.Client {
		ctx := deadline(t, 20*time.Second)
		cl, err := beepclient.Dial(ctx, beepclient.Options{URL: "ws://" + addr + "/connect", Claim: claim.Claim{UserID: user, ClientID: user + "-phone"}, Publish: true, Receive: 1})
		if err != nil {
			t.Fatalf("dial %s: %v", user, err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	a, b := dial("u-a"), dial("u-b")
	talkUntilHeard(t, a, 1, b, 10)

	// Peers that never connect hold their ICE sockets, each on a /connect
	// socket of its own, until a new one is refused.
	offer := audioOffer(t)
	var held []*websocket.Conn
	defer func() {
		for _, ws := range held {
			ws.Close()
		}
	}()
	refused := false
	for i := 0; i < budget.iceSockets+5 && !refused; i++ {
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/connect", claimHeader(fmt.Sprintf("u-p%d", i), "phone"))
		if err != nil {
			t.Fatalf("peer %d: dial: %v", i, err)
		}
		held = append(held, ws)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(offer)); err != nil {
			t.Fatalf("peer %d: send offer: %v", i, err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, msg, err := ws.ReadMessage()
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce) && ce.Code == websocket.CloseTryAgainLater:
			refused = true
			t.Logf("peer %d refused: %d %q", i, ce.Code, ce.Text)
			if i < budget.iceSockets/2 {
				t.Errorf("refused after only %d peers; the ICE share is %d sockets", i, budget.iceSockets)
			}
		case err != nil:
			t.Fatalf("peer %d: %v\n%s", i, err, c.log())
		case !strings.Contains(string(msg), "a=candidate"):
			t.Fatalf("peer %d: answer without candidates: %q", i, msg)
		}
	}
	if !refused {
		t.Fatalf("%d peers admitted past the ICE share of %d sockets", len(held), budget.iceSockets)
	}
	peers := len(held) - 1
	c.waitLine(0, 10*time.Second, "connection refused", "ICE socket limit")
	talkUntilHeard(t, a, 2, b, 10)
	healthy("peers refused")

	// Idle keep-alive HTTP connections, each after one request, until a
	// new one is refused.
	var conns []net.Conn
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	var refusal *http.Response
	for i := 0; i < budget.httpConns+5 && refusal == nil; i++ {
		cn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, cn)
		_ = cn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(cn, "GET /healthz HTTP/1.1\r\nHost: router\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(cn), nil)
		if err != nil {
			t.Fatalf("connection %d: %v\n%s", i, err, c.log())
		}
		resp.Body.Close()
		// Served (404: /healthz is on METRICS_LISTEN), or refused.
		if resp.StatusCode == http.StatusServiceUnavailable {
			refusal = resp
			t.Logf("HTTP connection refused after %d idle ones and %d /connect sockets", i, len(held))
		}
	}
	if refusal == nil {
		t.Fatalf("%d HTTP connections admitted past the share of %d", len(conns)+len(held), budget.httpConns)
	}
	if ra := refusal.Header.Get("Retry-After"); ra != strconv.Itoa(refuseRetryAfter) {
		t.Errorf("Retry-After %q, want %d", ra, refuseRetryAfter)
	}
	if open := len(conns) - 1 + len(held); open > budget.httpConns {
		t.Errorf("%d connections open before the refusal, the share is %d", open, budget.httpConns)
	}
	c.waitLine(0, 10*time.Second, "refusing a new connection", "listener=LISTEN")
	// What clients hold is within their shares: the rest of the limit
	// is left to the router.
	peak := fdCount(t, c)
	if peak > base+budget.httpConns+budget.iceSockets+2 || peak >= limit {
		t.Errorf("the router holds %d descriptors (%d at start) of %d: more than the clients' shares %d+%d", peak, base, limit, budget.httpConns, budget.iceSockets)
	}
	t.Logf("the router holds %d descriptors (%d at start) of its limit of %d", peak, base, limit)
	talkUntilHeard(t, a, 3, b, 10)
	healthy("HTTP refused")
	metrics := getOK(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{`router_http_refused_total{listener="LISTEN"} 1`, `router_refused_total{what="socket_limit"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(c.log(), "too many open files") {
		t.Errorf("the router ran out of descriptors:\n%s", c.log())
	}

	// Closing the idle connections frees their places.
	for _, cn := range conns {
		cn.Close()
	}
	conns = nil
	testutil.Eventually(t, 10*time.Second, "LISTEN serving again", func() bool {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get("http://" + addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNotFound // served (404: /healthz is on METRICS_LISTEN)
	})
	t.Logf("limit %d: %d peers admitted (ICE share %d sockets, the call's 2 included), then 1013; HTTP refused at the share of %d connections", limit, peers, budget.iceSockets, budget.httpConns)
}

// fdCount returns how many descriptors the child holds (prlimit execs the
// router: the child's pid is the router's).
func fdCount(t *testing.T, c *child) int {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// audioOffer returns a browser-like offer (Opus, sendrecv) without
// candidates: a router peer answering it gathers its sockets and never
// connects.
func audioOffer(t *testing.T) string {
	t.Helper()
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendrecv}); err != nil {
		t.Fatal(err)
	}
	o, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return o.SDP
}

// claimHeader returns the headers of a request as user's client.
func claimHeader(user, client string) http.Header {
	h := http.Header{}
	req := &http.Request{Header: h}
	setClaim(req, user, client)
	return h
}

// getOK returns the body of a GET that must answer 200.
func getOK(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// TestLimitListenerRefuses: past its bound a listener answers 503 with
// Retry-After, in plain HTTP or over TLS as its clients speak, while the
// connection within the bound is still served; closing it makes room.
func TestLimitListenerRefuses(t *testing.T) {
	certFile, keyFile, leaf := writeTestPair(t, t.TempDir(), "l")
	pair, err := loadPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	tests := []struct {
		name string
		tls  bool
	}{{"plain", false}, {"TLS", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l := newLimitListener(ln, "LISTEN", 1, 2, testLogger(t))
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
			scheme := "http"
			var clientTLS *tls.Config
			if tt.tls {
				certs := &certStore{}
				certs.cert.Store(pair)
				srv.TLSConfig = certs.tlsConfig()
				l.tlsConfig = srv.TLSConfig
				scheme, clientTLS = "https", &tls.Config{RootCAs: roots}
			}
			served := make(chan error, 1)
			go func() {
				if tt.tls {
					served <- srv.ServeTLS(l, "", "")
				} else {
					served <- srv.Serve(l)
				}
			}()
			defer func() {
				srv.Close()
				<-served
			}()
			client := func() *http.Client {
				return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: clientTLS, ForceAttemptHTTP2: true}}
			}
			url := scheme + "://" + ln.Addr().String() + "/"
			first := client()
			resp, err := first.Get(url) // kept alive: holds the one place
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body) // read to the end, or the connection is not kept
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("first: %d", resp.StatusCode)
			}
			resp, err = client().Get(url)
			if err != nil {
				t.Fatalf("second: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != strconv.Itoa(refuseRetryAfter) || !strings.Contains(string(b), "connection limit") {
				t.Errorf("second: %d Retry-After %q %q, want 503 with Retry-After %d", resp.StatusCode, resp.Header.Get("Retry-After"), b, refuseRetryAfter)
			}
			if l.refused.Load() != 1 {
				t.Errorf("%d refusals counted, want 1", l.refused.Load())
			}
			// The first connection is still served.
			if resp, err := first.Get(url); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("first again: %v %v", err, resp)
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			first.CloseIdleConnections()
			testutil.Eventually(t, 5*time.Second, "a place freed", func() bool {
				c := client()
				defer c.CloseIdleConnections()
				resp, err := c.Get(url)
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusOK
			})
		})
	}
}

// TestFDHeadroomWarnings: the start-up warning about connection bounds is
// for bounds an operator chose; the defaults under a small limit are told
// at info level (the headroom is then the bound), not warned on every start.
func TestFDHeadroomWarnings(t *testing.T) {
	defaults, err := loadConfig(func(string) string { return "" }, false)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		limit  uint64
		change func(*config)
		warn   string // a WARN line with this text, or none
	}{
		{"defaults, small limit", 1024, func(*config) {}, ""},
		{"defaults, large limit", 1 << 20, func(*config) {}, ""},
		{"raised bound", 1024, func(c *config) { c.MaxStreams = 50000 }, "configured connection bounds exceed"},
		{"unbounded", 1 << 20, func(c *config) { c.SylkMaxConns = 0 }, "set to 0 (no limit)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := defaults
			tt.change(&cfg)
			var buf strings.Builder
			planFDs(cfg, tt.limit, slog.New(slog.NewTextHandler(&buf, nil)))
			var warns []string
			for _, l := range strings.Split(buf.String(), "\n") {
				if strings.Contains(l, "level=WARN") {
					warns = append(warns, l)
				}
			}
			switch {
			case tt.warn == "" && len(warns) > 0:
				t.Errorf("warned: %q", warns)
			case tt.warn != "" && (len(warns) != 1 || !strings.Contains(warns[0], tt.warn)):
				t.Errorf("warnings %q, want one with %q", warns, tt.warn)
			}
		})
	}
}
