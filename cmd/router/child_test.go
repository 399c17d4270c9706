package main

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// child is the router binary running as a child process, with its log
// (stderr) captured line by line for the test to wait on.
type child struct {
	t   *testing.T
	cmd *exec.Cmd

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at every new line
	exited  chan struct{} // closed once the log ended (the process exits)
	killed  bool          // kill ended it; the test's goroutine only
}

// runChild starts argv (the router binary, perhaps behind prlimit) with
// env over PATH and HOME, in an empty directory (no .env), and stops it
// with SIGTERM at the end of the test.
func runChild(t *testing.T, argv []string, env map[string]string) *child {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = t.TempDir()
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, cmd: cmd, changed: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(c.exited)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			close(c.changed)
			c.changed = make(chan struct{})
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		if c.killed {
			return
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { <-c.exited; done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("router exited: %v\n%s", err, c.log())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("router did not exit after SIGTERM")
		}
	})
	return c
}

// kill ends the process with SIGKILL (no goodbye to anyone) and waits
// until it is gone.
func (c *child) kill() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatalf("kill: %v", err)
	}
	<-c.exited
	_ = c.cmd.Wait() // "signal: killed"
	c.killed = true
}

// log returns everything logged so far.
func (c *child) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

// waitLine waits until a line containing every one of parts is logged
// after the first from lines, and returns it with its index; the test
// fails if the process exits or d passes first.
func (c *child) waitLine(from int, d time.Duration, parts ...string) (string, int) {
	c.t.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		for i := from; i < len(c.lines); i++ {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(c.lines[i], p)
			}
			if ok {
				l := c.lines[i]
				c.mu.Unlock()
				return l, i
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-c.exited:
			c.t.Fatalf("router exited before logging %q:\n%s", parts, c.log())
		case <-timeout.C:
			c.t.Fatalf("no line with %q within %v:\n%s", parts, d, c.log())
		}
	}
}

// logValue returns the value of key=value in a text-format log line
// (quoted or not).
func logValue(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if j := strings.Index(v[1:], `"`); j >= 0 {
			return v[1 : j+1]
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		return v[:j]
	}
	return v
}
