package plugins

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/rtp"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/stages"

	"github.com/beepvoice/router/internal/testutil"
)

// binDir holds the plugins the tests build, once per test binary.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "beep-plugins-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var builds sync.Map // package → *buildResult

type buildResult struct {
	once sync.Once
	path string
	err  error
}

// build compiles a plugin main package of this module (e.g.
// "internal/testplugin") and returns the binary's path.
func build(t testing.TB, pkg string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(pkg, &buildResult{})
	b := v.(*buildResult)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, filepath.Base(pkg))
		args := []string{"build", "-o", b.path}
		if pkg == "transcriber" {
			args = append(args, "-tags", "opus") // the cgo libopus decoder
		}
		cmd := exec.Command("go", append(args, "./"+pkg)...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			b.err = fmt.Errorf("go build ./%s: %w\n%s", pkg, err, out.String())
		}
	})
	if b.err != nil {
		if pkg == "transcriber" {
			t.Skipf("transcriber does not build here (it needs cgo and Debian's libopus-dev): %v", b.err)
		}
		t.Fatal(b.err)
	}
	return b.path
}

// startNATS runs an embedded NATS server on loopback and connects to it.
func startNATS(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(testutil.StartNATS(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// subscribe returns a channel of the messages on subject.
func subscribe(t testing.TB, nc *nats.Conn, subject string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(subject, ch)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return ch
}

// next returns the next message whose Beep-Result-Kind is kind, skipping
// others, or fails after d.
func next(t testing.TB, ch chan *nats.Msg, kind string, d time.Duration) *nats.Msg {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		select {
		case m := <-ch:
			if kind == "" || m.Header.Get(HeaderKind) == kind {
				return m
			}
		case <-deadline.C:
			t.Fatalf("no %q result within %v", kind, d)
			return nil
		}
	}
}

// gone reports whether process pid no longer exists.
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// testEnv is a session manager with users in conversations.
type testEnv struct {
	m *room.Manager
}

type nopSink struct{}

func (nopSink) Open(*room.Track) (rtc.TrackSink, error) { return nil, nil }

func newEnv(t testing.TB, members map[string]string) *testEnv {
	t.Helper()
	m, err := room.New(room.Config{Sink: nopSink{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	for user, conv := range members {
		if err := m.Join(user, conv); err != nil {
			t.Fatal(err)
		}
	}
	return &testEnv{m: m}
}

func (e *testEnv) track(user string, ssrc uint32) *room.Track {
	return room.NewTrack(e.m.User(user), rtc.NewUpTrack(claim.Claim{UserID: user, ClientID: user + "-phone"}, ssrc, 1))
}

// chain opens a gate → stage pipeline for track tr.
func chain(t testing.TB, st pipeline.Stage, tr *room.Track, extra ...namedStage) rtc.TrackSink {
	t.Helper()
	m := map[string]pipeline.Stage{"gate": &stages.Gate{}}
	order := []string{"gate"}
	for _, e := range extra {
		m[e.name] = e.stage
		order = append(order, e.name)
	}
	m["plugin"] = st
	order = append(order, "plugin")
	sink, err := pipeline.New(m, order...).Open(tr)
	if err != nil {
		t.Fatal(err)
	}
	return sink
}

type namedStage struct {
	name  string
	stage pipeline.Stage
}

// rtpPacket returns a marshalled RTP packet; level < 0 leaves out the audio
// level extension.
func rtpPacket(t testing.TB, seq uint16, ts uint32, ssrc uint32, level int, payload []byte) []byte {
	t.Helper()
	p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: ts, SSRC: ssrc}, Payload: payload}
	if level >= 0 {
		if err := p.SetExtension(1, []byte{byte(level)}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// logBuffer collects a stage's logs for a test to search.
type logBuffer struct{ testutil.Buffer }

func (l *logBuffer) contains(s string) bool { return strings.Contains(l.String(), s) }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testSettings are fast settings for tests.
func testSettings(path string, args ...string) Settings {
	s := DefaultSettings
	s.Path = path
	s.Args = args
	s.HealthInterval = pipeline.Duration(50 * time.Millisecond)
	s.StallTimeout = pipeline.Duration(500 * time.Millisecond)
	s.Backoff = pipeline.Duration(10 * time.Millisecond)
	s.MaxBackoff = pipeline.Duration(50 * time.Millisecond)
	s.StopTimeout = pipeline.Duration(5 * time.Second)
	return s
}
