package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
)

// TestStartupFailures runs the real binary with a start-up failure of each
// kind: it must exit with the expected code, name the cause on one line,
// print no panic or goroutine stack, and exit promptly.
func TestStartupFailures(t *testing.T) {
	bin := buildRouter(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const rest = `
  - name: forwarder
  - name: bite-chunker
  - name: nats-sink
`
	badYAML := write("bad-yaml.yaml", "stages:\n  - name: [permission-gate\n")
	unknownKind := write("unknown-kind.yaml", "stages:\n  - name: permission-gate\n  - name: frobnicator\n")
	unknownSetting := write("unknown-setting.yaml", "stages:\n  - name: permission-gate\n  - name: forwarder\n    settings:\n      treshold_dbov: -40\n  - name: nats-sink\n")
	noGate := write("no-gate.yaml", "stages:"+rest)
	plugin := write("plugin.yaml", "stages:\n  - name: permission-gate\n  - name: plugin\n    settings:\n      path: "+filepath.Join(dir, "no-such-plugin")+rest)
	missing := filepath.Join(dir, "missing.yaml")

	// A TCP listener holding a port, and a UDP socket holding one.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udpPort := strconv.Itoa(udp.LocalAddr().(*net.UDPAddr).Port)

	// TLS pairs: a good one, and the key of another certificate.
	certFile, keyFile, _ := writeTestPair(t, dir, "tls")
	_, otherKey, _ := writeTestPair(t, dir, "other")
	notPEM := write("not-pem.crt", "not a certificate\n")

	tests := []struct {
		name   string
		args   []string
		env    []string
		code   int
		want   []string
		natsUp string // embedded NATS address that must be free after the exit
	}{
		{name: "missing PIPELINE file", env: []string{"PIPELINE=" + missing}, code: 1, want: []string{"PIPELINE", "missing.yaml"}},
		{name: "bad YAML", env: []string{"PIPELINE=" + badYAML}, code: 1, want: []string{"PIPELINE", "bad-yaml.yaml"}},
		{name: "unknown stage kind", env: []string{"PIPELINE=" + unknownKind}, code: 1, want: []string{"PIPELINE", "unknown-kind.yaml", "frobnicator"}},
		{name: "unknown setting", env: []string{"PIPELINE=" + unknownSetting}, code: 1, want: []string{"PIPELINE", "unknown-setting.yaml", "forwarder", "treshold_dbov"}},
		{name: "no gate first", env: []string{"PIPELINE=" + noGate}, code: 1, want: []string{"PIPELINE", "no-gate.yaml", "first stage", "permission-gate"}},
		{name: "plugin path missing", env: []string{"PIPELINE=" + plugin}, code: 1, want: []string{"PIPELINE", "plugin.yaml", "plugin", "no-such-plugin"}},
		{name: "LISTEN taken", env: []string{"LISTEN=" + taken.Addr().String()}, code: 1, want: []string{"LISTEN", taken.Addr().String()}},
		{name: "UDP_PORT taken", env: []string{"UDP_PORT=" + udpPort}, code: 1, want: []string{"UDP", udpPort}},
		{name: "METRICS_LISTEN taken", env: []string{"METRICS_LISTEN=" + taken.Addr().String()}, code: 1, want: []string{"METRICS_LISTEN", taken.Addr().String()}},
		{name: "NATS_EMBEDDED_LISTEN taken", env: []string{"NATS=embedded", "NATS_EMBEDDED_LISTEN=" + taken.Addr().String()}, code: 1, want: []string{"NATS_EMBEDDED_LISTEN", taken.Addr().String()}},
		{name: "SYLK_ACCOUNTS missing", env: []string{"SYLK_ACCOUNTS=" + missing}, code: 1, want: []string{"sylk accounts", "missing.yaml"}},
		{name: "SYLK_ACCOUNTS bad line", env: []string{"SYLK_ACCOUNTS=" + write("accounts", "alice@example.com:not-an-ha1\n")}, code: 1, want: []string{"sylk accounts", "accounts:1"}},
		{name: "SIP_REGISTRAR not a SIP URI", env: []string{"SIP_REGISTRAR=http://registrar.example.org"}, code: 1, want: []string{"registrar", "http://registrar.example.org"}},
		{name: "env-file missing", args: []string{"-env-file", filepath.Join(dir, "nope.env")}, code: 2, want: []string{"nope.env"}},
		{name: "TLS_CERT missing", env: []string{"TLS_CERT=" + missing, "TLS_KEY=" + keyFile}, code: 2, want: []string{"TLS_CERT", "missing.yaml"}},
		{name: "TLS_KEY missing", env: []string{"TLS_CERT=" + certFile, "TLS_KEY=" + missing}, code: 2, want: []string{"TLS_KEY", "missing.yaml"}},
		{name: "TLS_CERT not PEM", env: []string{"TLS_CERT=" + notPEM, "TLS_KEY=" + keyFile}, code: 2, want: []string{"TLS_CERT", "not-pem.crt"}},
		{name: "TLS pair mismatched", env: []string{"TLS_CERT=" + certFile, "TLS_KEY=" + otherKey}, code: 2, want: []string{"TLS_CERT", "TLS_KEY", "does not match"}},
		{name: "TLS_CERT without TLS_KEY", env: []string{"TLS_CERT=" + certFile}, code: 2, want: []string{"TLS_CERT", "TLS_KEY"}},
		{name: "NATS_CREDS missing", env: []string{"NATS=nats://127.0.0.1:4", "NATS_CREDS=" + missing}, code: 2, want: []string{"NATS_CREDS", "missing.yaml", "no such file"}},
		{name: "NATS_CREDS not credentials", env: []string{"NATS=nats://127.0.0.1:4", "NATS_CREDS=" + notPEM}, code: 2, want: []string{"NATS_CREDS", "not-pem.crt", "JWT"}},
		{name: "NATS_CREDS with embedded NATS", env: []string{"NATS=embedded", "NATS_CREDS=" + notPEM}, code: 2, want: []string{"NATS_CREDS", "embedded"}},
		{name: "NATS_TLS_CA not PEM", env: []string{"NATS=tls://127.0.0.1:4", "NATS_TLS_CA=" + notPEM}, code: 2, want: []string{"NATS_TLS_CA", "not-pem.crt"}},
		{name: "NATS_TLS_CERT without NATS_TLS_KEY", env: []string{"NATS=tls://127.0.0.1:4", "NATS_TLS_CERT=" + certFile}, code: 2, want: []string{"NATS_TLS_CERT", "NATS_TLS_KEY"}},
		{name: "NATS_TLS pair mismatched", env: []string{"NATS=tls://127.0.0.1:4", "NATS_TLS_CERT=" + certFile, "NATS_TLS_KEY=" + otherKey}, code: 2, want: []string{"NATS_TLS_CERT", "NATS_TLS_KEY", "does not match"}},
		{name: "-dev-tls without -dev", args: []string{"-dev-tls"}, code: 2, want: []string{"-dev-tls", "-dev"}},
		{name: "-dev-tls with TLS_CERT", args: []string{"-dev", "-dev-tls"}, env: []string{"TLS_CERT=" + certFile, "TLS_KEY=" + keyFile, "PERMISSIONS_HOST="}, code: 2, want: []string{"-dev-tls", "TLS_CERT"}},
		{name: "LISTEN taken after embedded NATS", env: []string{"LISTEN=" + taken.Addr().String()}, code: 1, want: []string{"LISTEN", taken.Addr().String()}, natsUp: testutil.FreeAddr(t)},
		{name: "bad PIPELINE after embedded NATS", env: []string{"PIPELINE=" + unknownKind}, code: 1, want: []string{"PIPELINE", "unknown-kind.yaml", "frobnicator"}, natsUp: testutil.FreeAddr(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tt.args...)
			cmd.Dir = t.TempDir() // no .env
			cmd.Env = append([]string{
				"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"),
				"ICE_IPS=127.0.0.1", "PERMISSIONS_HOST=allow-all", "LISTEN=127.0.0.1:0",
			}, tt.env...)
			if tt.natsUp != "" {
				cmd.Env = append(cmd.Env, "NATS=embedded", "NATS_EMBEDDED_LISTEN="+tt.natsUp)
			}
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("still running after 20s; output:\n%s", out)
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tt.code {
				t.Errorf("exit %v, want code %d; output:\n%s", err, tt.code, out)
			}
			s := string(out)
			if strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
				t.Errorf("output has a panic or stack:\n%s", s)
			}
			var line string
			for _, l := range strings.Split(s, "\n") {
				if strings.HasPrefix(l, "router: ") {
					if line != "" {
						t.Errorf("two error lines: %q and %q", line, l)
					}
					line = l
				}
			}
			t.Log(line)
			if line == "" {
				t.Errorf("no line starting %q; output:\n%s", "router: ", s)
			}
			for _, w := range tt.want {
				if !strings.Contains(line, w) {
					t.Errorf("error line does not name %q: %q", w, line)
				}
			}
			if tt.natsUp != "" {
				ln, err := net.Listen("tcp", tt.natsUp)
				if err != nil {
					t.Errorf("embedded NATS port %s not released: %v", tt.natsUp, err)
				} else {
					ln.Close()
				}
			}
		})
	}
}

// TestFailedStartReleases: a start that fails after the embedded NATS server
// listens (here on LISTEN) returns the error, not a panic, and has shut the
// server down by then: its port is free at once, in the same process, and
// TestMain's goroutine check sees nothing left running.
func TestFailedStartReleases(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	natsAddr := testutil.FreeAddr(t)
	vars := map[string]string{
		"LISTEN": taken.Addr().String(), "METRICS_LISTEN": "127.0.0.1:0",
		"NATS": "embedded", "NATS_EMBEDDED_LISTEN": natsAddr,
		"ICE_IPS": "127.0.0.1", "PERMISSIONS_HOST": "allow-all",
	}
	cfg, err := loadConfig(func(k string) string { return vars[k] }, false)
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(cfg, testLogger(t), registry())
	if err == nil {
		t.Fatal("started on a taken LISTEN")
	}
	if a != nil {
		t.Errorf("start returned an app with its error")
	}
	if !strings.Contains(err.Error(), "LISTEN") || !strings.Contains(err.Error(), taken.Addr().String()) {
		t.Errorf("error does not name LISTEN and its address: %v", err)
	}
	ln, err := net.Listen("tcp", natsAddr)
	if err != nil {
		t.Fatalf("embedded NATS port %s still taken after the failed start: %v", natsAddr, err)
	}
	ln.Close()
}
