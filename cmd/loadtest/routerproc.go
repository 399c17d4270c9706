package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// routerSpec says how to start a router subprocess.
type routerSpec struct {
	// Bin is the executable: a cmd/router binary, or this tool (with Args
	// -serve-router) for the profiling harness.
	Bin  string
	Args []string
	// Env holds extra KEY=value settings; the ones that decide where traffic
	// goes cannot be given (see forbiddenEnv).
	Env []string
	// CPUs pins the router with taskset -c (e.g. "0"); empty: no pinning.
	CPUs string
	// Standin starts a backend-permissions stand-in that allows everything
	// and points PERMISSIONS_HOST at it; otherwise PERMISSIONS_HOST=allow-all.
	Standin bool
	// Log receives the router's log lines (JSON); nil discards them.
	Log io.Writer
	// NATS is the URL of the NATS the router uses (multi-router mode: the
	// tool's, on loopback); empty: the router's embedded one.
	NATS string
}

// keepEnv reports whether an environment variable of the tool passes to a
// router it starts: only the process basics and the Go runtime's settings,
// so that no router setting of the caller's environment leaks in.
func keepEnv(name string) bool {
	switch name {
	case "PATH", "HOME", "TMPDIR", "LANG", "TZ":
		return true
	}
	return strings.HasPrefix(name, "GO") // GOGC, GOMAXPROCS, GODEBUG, GOMEMLIMIT…
}

// forbiddenEnv are settings -router-env may not give: they would move
// traffic off loopback, change what the tool measures against, or break
// how it reads the router's log and claims.
var forbiddenEnv = map[string]bool{
	"LISTEN": true, "ICE_IPS": true, "PUBLIC_IPS": true, "ICE_SERVERS": true, "NATS": true,
	"NATS_EMBEDDED_LISTEN": true, "PERMISSIONS_HOST": true, "LOG_FORMAT": true,
	"METRICS_LISTEN": true, "AUTH_JWT_PUBLIC_KEY": true,
}

// routerProc is a running router subprocess.
type routerProc struct {
	cmd      *exec.Cmd
	PID      int
	URL      string // http://127.0.0.1:port
	DebugURL string // pprof and /stats; only the harness has one
	perms    *http.Server

	exited  chan struct{}
	waitErr error

	mu       sync.Mutex
	problems []string // WARN and ERROR log lines, the first few
	nProblem int
}

// startRouter starts the router described by spec and waits until it
// listens (at most 20 s, or until ctx ends).
func startRouter(ctx context.Context, spec routerSpec) (*routerProc, error) {
	env := make([]string, 0, len(os.Environ())+10)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if keepEnv(k) {
			env = append(env, kv)
		}
	}
	r := &routerProc{exited: make(chan struct{})}
	perms := "allow-all"
	if spec.Standin {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		r.perms = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			// backend-permissions: GET /user/{user}/conversation/{conversation}.
			if req.Method == http.MethodGet && strings.HasPrefix(req.URL.Path, "/user/") && strings.Contains(req.URL.Path, "/conversation/") {
				w.WriteHeader(http.StatusOK)
				return
			}
			w.WriteHeader(http.StatusNotFound)
		}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = r.perms.Serve(ln) }()
		perms = "http://" + ln.Addr().String()
	}
	env = append(env,
		"LISTEN=127.0.0.1:0",
		"ICE_IPS=127.0.0.1",
		"NATS="+cmp.Or(spec.NATS, "embedded"),
		"PERMISSIONS_HOST="+perms,
		"LOG_FORMAT=json",
		"LOG_LEVEL=info",
		// Every client dials from 127.0.0.1: the per-address bound on
		// /connect sockets waiting for their offer (16) would refuse a
		// ramp's burst with 429. -router-env may set it again.
		"CONNECT_MAX_PENDING_PER_ADDR=0",
	)
	for _, kv := range spec.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || forbiddenEnv[k] {
			r.closePerms()
			return nil, fmt.Errorf("-router-env %q: not allowed (the tool keeps the router on loopback with embedded NATS)", kv)
		}
		env = append(env, kv)
	}
	bin, err := exec.LookPath(spec.Bin)
	if err == nil {
		bin, err = filepath.Abs(bin)
	}
	if err != nil {
		r.closePerms()
		return nil, fmt.Errorf("router binary: %w", err)
	}
	name, args := bin, spec.Args
	if spec.CPUs != "" {
		ts, err := exec.LookPath("taskset")
		if err != nil {
			r.closePerms()
			return nil, fmt.Errorf("-router-cpus needs taskset: %w", err)
		}
		name, args = ts, append([]string{"-c", spec.CPUs, bin}, spec.Args...)
	}
	dir, err := os.MkdirTemp("", "loadtest-router-")
	if err != nil {
		r.closePerms()
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Dir = dir // no stray .env file
	// The router dies with the tool, even if the tool is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.closePerms()
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // one stream: the router logs on stderr
	if err := cmd.Start(); err != nil {
		r.closePerms()
		_ = os.RemoveAll(dir)
		return nil, err
	}
	r.cmd = cmd
	r.PID = cmd.Process.Pid

	ready := make(chan struct{})
	go func() {
		defer func() {
			r.waitErr = cmd.Wait()
			_ = os.RemoveAll(dir)
			close(r.exited)
		}()
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Bytes()
			if spec.Log != nil {
				_, _ = spec.Log.Write(append(append(make([]byte, 0, len(line)+1), line...), '\n'))
			}
			var m struct {
				Level, Msg, Addr string
			}
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			switch {
			case m.Msg == "pprof listening":
				r.DebugURL = "http://" + m.Addr
			case m.Msg == "router listening" && !signalled:
				r.URL = "http://" + m.Addr
				signalled = true
				close(ready)
			case m.Level == "WARN" || m.Level == "ERROR":
				r.mu.Lock()
				r.nProblem++
				if len(r.problems) < 5 {
					r.problems = append(r.problems, string(line))
				}
				r.mu.Unlock()
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	select {
	case <-ready:
		return r, nil
	case <-r.exited:
		r.closePerms()
		return nil, fmt.Errorf("router exited before listening: %v; log: %s", r.waitErr, strings.Join(r.Problems(), " | "))
	case <-timer.C:
	case <-ctx.Done():
	}
	_ = r.Stop(5 * time.Second)
	return nil, errors.New("router did not listen within 20s")
}

// Problems returns the first WARN and ERROR log lines, with a count of the
// rest. The allow-all and dev warnings of a load run are expected.
func (r *routerProc) Problems() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := append([]string(nil), r.problems...)
	if r.nProblem > len(r.problems) {
		out = append(out, fmt.Sprintf("(%d more)", r.nProblem-len(r.problems)))
	}
	return out
}

// Stop sends SIGTERM and waits up to timeout for the router to exit, then
// kills it.
func (r *routerProc) Stop(timeout time.Duration) error {
	defer r.closePerms()
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.exited:
		return r.waitErr
	case <-t.C:
		_ = r.cmd.Process.Kill()
		<-r.exited
		return fmt.Errorf("router did not stop within %v: killed", timeout)
	}
}

func (r *routerProc) closePerms() {
	if r.perms != nil {
		_ = r.perms.Close()
	}
}
