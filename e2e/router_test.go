package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/internal/testutil"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error

	// noIsolation says why the browser tests cannot run in a loopback-only
	// network namespace; they skip then, unless E2E_HOST_NETWORK=1.
	noIsolation error
)

// Environment of the isolated run.
const (
	envNetns       = "E2E_NETNS"        // "1": this process runs in the loopback-only namespace
	envHostNetwork = "E2E_HOST_NETWORK" // "1": run the browser tests on the host's network
	envRouterBin   = "E2E_ROUTER_BIN"
)

func TestMain(m *testing.M) {
	switch {
	case os.Getenv(envNetns) == "1":
		if err := loopbackUp(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: loopback-only network namespace: %v\n", err)
			os.Exit(1)
		}
	case os.Getenv(envHostNetwork) == "1":
	default:
		if _, err := exec.LookPath("chromium"); err != nil {
			break // the browser tests skip
		}
		// Build the router here, where the module cache and the network
		// are, then run the tests again in a namespace that has loopback
		// only.
		env := []string{envNetns + "=1"}
		if os.Getenv(envRouterBin) == "" {
			bin, err := buildRouter()
			if err != nil {
				fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
				os.Exit(1)
			}
			env = append(env, envRouterBin+"="+bin)
		}
		code, err := runIsolated(env)
		if buildDir != "" {
			_ = os.RemoveAll(buildDir)
		}
		if err == nil {
			os.Exit(code)
		}
		noIsolation = err
	}
	// goleak runs after the tests; the router and the browsers are
	// subprocesses, so what it checks is this process's goroutines
	// (chromedp, nats.go, httptest).
	code := func() int {
		defer func() {
			if buildDir != "" {
				_ = os.RemoveAll(buildDir)
			}
		}()
		return m.Run()
	}()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// moduleRoot returns the directory of the module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside a module")
	}
	return filepath.Dir(gomod), nil
}

// buildRouter builds ./cmd/router once per process.
func buildRouter() (string, error) {
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		buildDir, err = os.MkdirTemp("", "beep-e2e-router-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(buildDir, "router")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/router")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/router: %v\n%s", err, out)
		}
	})
	return buildBin, buildErr
}

// routerBinary returns $E2E_ROUTER_BIN, or builds ./cmd/router.
func routerBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv(envRouterBin); bin != "" {
		return bin
	}
	bin, err := buildRouter()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// router is a running ./cmd/router -dev subprocess.
type router struct {
	cmd     *exec.Cmd
	HTTP    string // http://127.0.0.1:port
	WS      string // ws://127.0.0.1:port
	NATS    string // nats://127.0.0.1:port
	log     *testutil.Buffer
	exited  chan struct{}
	waitErr error
	stopped bool
}

// startRouter starts the router in -dev mode on loopback and waits until its
// HTTP port answers. The router is stopped with SIGTERM at cleanup, and the
// test fails unless it exits 0.
func startRouter(t *testing.T) *router {
	t.Helper()
	return startRouterEnv(t)
}

// startRouterEnv is startRouter with more settings (NAME=value) in the
// router's environment; they override the defaults.
func startRouterEnv(t *testing.T, env ...string) *router {
	t.Helper()
	bin := routerBinary(t)
	httpPort, natsPort := freePort(t), freePort(t)
	r := &router{
		HTTP:   fmt.Sprintf("http://127.0.0.1:%d", httpPort),
		WS:     fmt.Sprintf("ws://127.0.0.1:%d", httpPort),
		NATS:   fmt.Sprintf("nats://127.0.0.1:%d", natsPort),
		log:    &testutil.Buffer{},
		exited: make(chan struct{}),
	}
	r.cmd = exec.Command(bin, "-dev", "-env-file", os.DevNull)
	r.cmd.Env = append(os.Environ(),
		fmt.Sprintf("LISTEN=127.0.0.1:%d", httpPort),
		"ICE_IPS=127.0.0.1",
		"NATS=embedded",
		fmt.Sprintf("NATS_EMBEDDED_LISTEN=127.0.0.1:%d", natsPort),
		"ICE_DISCONNECTED_TIMEOUT=1s",
		"ICE_FAILED_TIMEOUT=1s",
		"LOG_LEVEL=info",
	)
	r.cmd.Env = append(r.cmd.Env, env...)
	r.cmd.Stdout = r.log
	r.cmd.Stderr = r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start router: %v", err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.stop(t)
		if t.Failed() {
			t.Logf("router log:\n%s", r.log.String())
		}
		saveArtifact(t, "router-"+sanitize(t.Name())+".log", []byte(r.log.String()))
	})

	// Ready when /readyz answers 200 (404: a router without it, whose HTTP
	// port answering is enough) and NATS accepts TCP.
	client := &http.Client{Timeout: time.Second}
	err := waitFor(15*time.Second, 50*time.Millisecond, func() error {
		select {
		case <-r.exited:
			return errStop{fmt.Errorf("router exited early: %v", r.waitErr)}
		default:
		}
		resp, err := client.Get(r.HTTP + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusNotFound {
			return fmt.Errorf("/readyz: %s", resp.Status)
		}
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", natsPort), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("router not ready: %v\n%s", err, r.log.String())
	}
	return r
}

// stop sends SIGTERM and checks that the router exits 0 in time.
func (r *router) stop(t *testing.T) {
	t.Helper()
	if r.stopped {
		return
	}
	r.stopped = true
	select {
	case <-r.exited:
		t.Errorf("router exited before the test ended: %v", r.waitErr)
		return
	default:
	}
	start := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	select {
	case <-r.exited:
		if r.waitErr != nil {
			t.Errorf("router did not exit cleanly after SIGTERM: %v", r.waitErr)
		} else {
			t.Logf("router exited 0 %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		}
	case <-time.After(20 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
		t.Errorf("router did not exit within 20s of SIGTERM")
	}
}

// join is POST /join/{conv} with the dev identity.
func (r *router) join(ctx context.Context, user, client, conv string) error {
	u := fmt.Sprintf("%s/join/%s?userid=%s&clientid=%s", r.HTTP, conv, user, client)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /join/%s: %s", conv, resp.Status)
	}
	return nil
}

// errStop ends waitFor early.
type errStop struct{ error }

// waitFor calls cond every interval until it returns nil, returns an errStop,
// or timeout passes; it returns cond's last error then.
func waitFor(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var stop errStop
		if errors.As(err, &stop) {
			return stop.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}

// artifactsDir returns $E2E_ARTIFACTS or e2e/artifacts, created.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("E2E_ARTIFACTS")
	if dir == "" {
		dir = "artifacts" // tests run in the package directory
	}
	abs, err := filepath.Abs(dir)
	if err == nil {
		dir = abs
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts: %v", err)
	}
	return dir
}

// saveArtifact writes data under the artifacts directory and returns the path.
func saveArtifact(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(artifactsDir(t), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Errorf("artifact %s: %v", name, err)
	}
	return p
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}
