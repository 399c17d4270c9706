package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// writeTestPair writes a fresh self-signed certificate for 127.0.0.1 and
// localhost, and its key, as PEM files in dir, and returns their paths and
// the certificate.
func writeTestPair(t *testing.T, dir, name string) (certFile, keyFile string, leaf *x509.Certificate) {
	t.Helper()
	c, err := devCertificate([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	// Written beside and renamed, as a certificate manager does, so that a
	// reload never sees half a file.
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{certFile, "CERTIFICATE", c.Certificate[0]}, {keyFile, "PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path+".tmp", pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f.path+".tmp", f.path); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, c.Leaf
}

// served returns the certificate addr presents in a TLS handshake.
func served(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// TestTLS starts a router with TLS_CERT and TLS_KEY: plain requests get
// HTTP/2 (or HTTP/1.1 from a client without it), the /subscribe SSE stream
// works over HTTP/2, two devices call each other over WSS signalling, and a
// reload serves a new pair at once while a bad new pair keeps the old one.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, leaf := writeTestPair(t, dir, "server")
	r := startRouter(t, map[string]string{"TLS_CERT": certFile, "TLS_KEY": keyFile})
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	base := "https://" + r.a.addr()

	t.Run("requests", func(t *testing.T) {
		tests := []struct {
			name      string
			transport *http.Transport
			proto     string
		}{
			{"HTTP/2", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}, "HTTP/2.0"},
			// A non-nil, empty TLSNextProto turns HTTP/2 off.
			{"HTTP/1.1", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}, "HTTP/1.1"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				defer tt.transport.CloseIdleConnections()
				resp, err := (&http.Client{Transport: tt.transport, Timeout: 10 * time.Second}).Get(base + "/healthz")
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Proto != tt.proto {
					t.Errorf("GET /healthz: %d over %s, want 200 over %s", resp.StatusCode, resp.Proto, tt.proto)
				}
			})
		}
	})

	t.Run("plain HTTP refused", func(t *testing.T) {
		resp, err := http.Get("http://" + r.a.addr() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("plain HTTP on the TLS listener answered 200")
			}
		}
	})

	t.Run("SSE over HTTP/2", func(t *testing.T) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		hc := &http.Client{Transport: tr}
		ctx := deadline(t, 15*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/subscribe", nil)
		setClaim(req, "u-sse", "phone")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/2.0" {
			t.Fatalf("GET /subscribe: %d over %s, want 200 over HTTP/2.0", resp.StatusCode, resp.Proto)
		}
		// The device is listed once its stream is registered; then an
		// event posted to it arrives on the stream.
		testutil.Eventually(t, 10*time.Second, "device listed", func() bool {
			req, _ := http.NewRequest(http.MethodGet, base+"/user/u-sse/devices", nil)
			setClaim(req, "u-sse", "phone")
			resp, err := hc.Do(req)
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			var ids []string
			return json.NewDecoder(resp.Body).Decode(&ids) == nil && len(ids) == 1
		})
		req, _ = http.NewRequest(http.MethodPost, base+"/user/u-sse/device/phone", strings.NewReader(`{"event":"ring","data":"over h2"}`))
		setClaim(req, "u-other", "laptop")
		post, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		post.Body.Close()
		if post.StatusCode != http.StatusOK {
			t.Fatalf("POST event: %d", post.StatusCode)
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() == "data: over h2" {
				return
			}
		}
		t.Fatalf("the event never arrived on the stream: %v", sc.Err())
	})

	t.Run("call over WSS", func(t *testing.T) {
		dialer := &websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: roots}, HandshakeTimeout: 10 * time.Second}
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}
		defer tr.CloseIdleConnections()
		for _, u := range []string{"u-a", "u-b"} {
			r.perms.allow("c-tls", u)
			req, _ := http.NewRequest(http.MethodPost, base+"/join/c-tls", nil)
			setClaim(req, u, u+"-phone")
			resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("join %s over HTTPS: %d", u, resp.StatusCode)
			}
		}
		a := dialTLS(t, r, dialer, "u-a", beepclient.Options{Publish: true, Receive: 1})
		b := dialTLS(t, r, dialer, "u-b", beepclient.Options{Publish: true, Receive: 1})
		talkUntilHeard(t, a, 1, b, 10)
	})

	t.Run("reload", func(t *testing.T) {
		if got := served(t, r.a.addr()); !got.Equal(leaf) {
			t.Fatalf("serves %s, want the configured certificate", fingerprint(got))
		}
		// A new pair, written over the configured files: served after the
		// reload, by new handshakes.
		_, _, second := writeTestPair(t, dir, "server")
		if err := r.a.reload(); err != nil {
			t.Fatalf("reload: %v", err)
		}
		if got := served(t, r.a.addr()); !got.Equal(second) {
			t.Fatalf("after reload serves %s, want the new %s", fingerprint(got), fingerprint(second))
		}
		// A bad new pair (a key of another certificate): the reload fails,
		// naming the settings, and the certificate in use stays.
		_, otherKey, _ := writeTestPair(t, dir, "other")
		if err := os.Rename(otherKey, keyFile); err != nil {
			t.Fatal(err)
		}
		err := r.a.reload()
		if err == nil || !strings.Contains(err.Error(), "TLS_CERT") || !strings.Contains(err.Error(), "TLS_KEY") {
			t.Fatalf("reload of a mismatched pair: %v, want an error naming TLS_CERT and TLS_KEY", err)
		}
		if got := served(t, r.a.addr()); !got.Equal(second) {
			t.Fatalf("after a failed reload serves %s, want the previous %s", fingerprint(got), fingerprint(second))
		}
	})
}

// setClaim sets X-User-Claim for user's client.
func setClaim(req *http.Request, user, client string) {
	b, _ := json.Marshal(claim.Claim{UserID: user, ClientID: client})
	req.Header.Set(claim.Header, string(b))
}

// dialTLS connects user's phone over wss:// and waits until the router sees
// its peer connected.
func dialTLS(t *testing.T, r *testRouter, dialer *websocket.Dialer, user string, o beepclient.Options) *beepclient.Client {
	t.Helper()
	ctx := deadline(t, 20*time.Second)
	o.URL = "wss://" + r.a.addr() + "/connect"
	o.Dialer = dialer
	o.Claim = claim.Claim{UserID: user, ClientID: user + "-phone"}
	c, err := beepclient.Dial(ctx, o)
	if err != nil {
		t.Fatalf("dial %s over WSS: %v", user, err)
	}
	t.Cleanup(c.Close)
	p := r.a.rooms.Peer(user, user+"-phone")
	if p == nil {
		t.Fatalf("the router has no peer for %s", user)
	}
	select {
	case <-p.Connected():
	case <-ctx.Done():
		t.Fatalf("the router never saw %s connected", user)
	}
	return c
}

// talkUntilHeard sends loud frames from speaker id on from, every 20 ms,
// until to has received n of them (or 20 s pass: the test fails).
func talkUntilHeard(t *testing.T, from *beepclient.Client, id byte, to *beepclient.Client, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	heard := make(chan error, 1)
	go func() {
		heard <- to.WaitFor(ctx, func(m map[string][]beepclient.Packet) bool {
			got := 0
			for _, ps := range m {
				for _, p := range ps {
					if len(p.Payload) >= 6 && speaker(p) == id {
						got++
					}
				}
			}
			return got >= n
		})
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case err := <-heard:
			if err != nil {
				t.Fatalf("speaker %d not heard: %v", id, err)
			}
			return
		case <-tick.C:
			if err := from.Send(frame(id, i), 10); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
	}
}

// TestDevTLSBinary runs the binary with -dev -dev-tls: it logs the
// certificate's SHA-256 fingerprint, which is the one a client sees, and
// where to go; with TLS_CERT and TLS_KEY, SIGHUP serves a new pair.
func TestDevTLSBinary(t *testing.T) {
	bin := buildRouter(t)

	t.Run("dev-tls fingerprint", func(t *testing.T) {
		addr := testutil.FreeAddr(t)
		c := runChild(t, []string{bin, "-dev", "-dev-tls"}, map[string]string{"LISTEN": addr, "ICE_IPS": "127.0.0.1"})
		line, _ := c.waitLine(0, 20*time.Second, "-dev-tls", "sha256=")
		c.waitLine(0, 20*time.Second, "open https://"+addr+"/")
		want := logValue(line, "sha256")
		got := served(t, addr)
		if fp := fingerprint(got); fp != want || len(want) != 32*3-1 {
			t.Errorf("logged fingerprint %q, the client sees %q", want, fp)
		}
		if err := got.VerifyHostname("127.0.0.1"); err != nil {
			t.Errorf("certificate not for 127.0.0.1: %v", err)
		}
		if err := got.VerifyHostname("localhost"); err != nil {
			t.Errorf("certificate not for localhost: %v", err)
		}
		if k, ok := got.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Errorf("key %T, want ECDSA P-256", got.PublicKey)
		}
	})

	t.Run("SIGHUP reload", func(t *testing.T) {
		dir := t.TempDir()
		certFile, keyFile, first := writeTestPair(t, dir, "server")
		addr := testutil.FreeAddr(t)
		c := runChild(t, []string{bin}, map[string]string{
			"LISTEN": addr, "ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": "allow-all",
			"TLS_CERT": certFile, "TLS_KEY": keyFile,
		})
		_, i := c.waitLine(0, 20*time.Second, "router listening", "scheme=https")
		if got := served(t, addr); !got.Equal(first) {
			t.Fatalf("serves %s, want %s", fingerprint(got), fingerprint(first))
		}
		_, _, second := writeTestPair(t, dir, "server")
		if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		c.waitLine(i, 10*time.Second, "TLS certificate reloaded", fingerprint(second))
		if got := served(t, addr); !got.Equal(second) {
			t.Fatalf("after SIGHUP serves %s, want %s", fingerprint(got), fingerprint(second))
		}
		// A missing key: one error line, and the second pair stays.
		if err := os.Remove(keyFile); err != nil {
			t.Fatal(err)
		}
		if err := c.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		line, _ := c.waitLine(i, 10*time.Second, "level=ERROR", "TLS certificate not reloaded")
		if !strings.Contains(line, "TLS_KEY") {
			t.Errorf("reload error does not name TLS_KEY: %s", line)
		}
		if got := served(t, addr); !got.Equal(second) {
			t.Fatalf("after a failed reload serves %s, want %s", fingerprint(got), fingerprint(second))
		}
	})
}
