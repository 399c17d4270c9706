package plugins

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"

	"github.com/beepvoice/router/internal/testutil"
)

// biteSource is a stage whose processors emit the bites a test hands them.
type biteSource struct{ emit pipeline.Emit }

func (b *biteSource) Open(_ *room.Track, emit pipeline.Emit) (pipeline.Processor, error) {
	b.emit = emit
	return pipeline.Nop{}, nil
}
func (b *biteSource) Close(context.Context) error { return nil }

type streamReport struct {
	Track       string `json:"track"`
	Client      string `json:"client"`
	SSRC        uint32 `json:"ssrc"`
	Packets     int    `json:"packets"`
	Bytes       int    `json:"bytes"`
	FirstSeq    uint16 `json:"first_seq"`
	LastSeq     uint16 `json:"last_seq"`
	Levels      int    `json:"levels"`
	HostDropped uint64 `json:"host_dropped"`
}

// TestEcho runs packets and bites through a real plugin process and checks
// what it saw, the results on NATS, the logs, and a clean stop.
func TestEcho(t *testing.T) {
	tests := []struct {
		name  string
		batch int
		flush time.Duration
	}{
		{"one message per packet", 1, 0},
		{"batched", 32, 5 * time.Millisecond},
	}
	bin := build(t, "internal/testplugin")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc := startNATS(t)
			results := subscribe(t, nc, "echo.>")
			env := newEnv(t, map[string]string{"alice": "conv-1", "bob": "other-1"})
			leaks := goleak.IgnoreCurrent()
			var logs logBuffer

			s := testSettings(bin, "-mode", "echo")
			s.Batch, s.Flush = tt.batch, pipeline.Duration(tt.flush)
			s.Conversations = []string{"conv-*"}
			s.Subjects = []string{"echo.>"}
			s.Config = map[string]any{"subject": "echo.out", "hello": "world"}
			st, err := New(pipeline.Env{NATS: nc, Logger: logs.logger()}, "echo", s)
			if err != nil {
				t.Fatal(err)
			}
			pid := st.Stats().PID
			if pid == 0 {
				t.Fatal("no pid")
			}

			src := &biteSource{}
			alice := chain(t, st, env.track("alice", 7), namedStage{"src", src})
			bob := chain(t, st, env.track("bob", 8))
			const n = 200
			payload := []byte{0xf8, 0xff, 0xfe, 1, 2, 3}
			for i := range n {
				if err := alice.WriteRTP(rtpPacket(t, uint16(1000+i), uint32(i*960), 7, 30, payload), time.Now()); err != nil {
					t.Fatal(err)
				}
				if err := bob.WriteRTP(rtpPacket(t, uint16(i), uint32(i*960), 8, 30, payload), time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			src.emit(&pipeline.Bite{Conversation: "conv-1", UserID: "alice", ClientID: "alice-phone", Seq: 4,
				Start: time.Now(), Duration: time.Second, Format: pipeline.FormatOggOpus, Data: make([]byte, 5000)})
			src.emit(&pipeline.Bite{Conversation: "other-1", UserID: "alice", Format: pipeline.FormatOggOpus}) // not seen
			alice.Close()
			bob.Close()

			m := next(t, results, "bite", 5*time.Second)
			var bite struct {
				Seq, Bytes int
				Format     string
			}
			if err := json.Unmarshal(m.Data, &bite); err != nil || bite.Seq != 4 || bite.Bytes != 5000 || bite.Format != "ogg-opus" {
				t.Fatalf("bite report %s (%v)", m.Data, err)
			}
			m = next(t, results, "stream", 5*time.Second)
			var rep streamReport
			if err := json.Unmarshal(m.Data, &rep); err != nil {
				t.Fatal(err)
			}
			want := streamReport{Track: "alice-phone/7", Client: "alice-phone", SSRC: 7, Packets: n, Bytes: n * len(payload),
				FirstSeq: 1000, LastSeq: 1000 + n - 1, Levels: n}
			if rep != want {
				t.Fatalf("stream report\n got %+v\nwant %+v", rep, want)
			}
			if m.Subject != "echo.out" || m.Header.Get(HeaderConversation) != "conv-1" ||
				m.Header.Get(HeaderUser) != "alice" || m.Header.Get(HeaderPlugin) != "echo" {
				t.Fatalf("result subject %s headers %v", m.Subject, m.Header)
			}

			if err := st.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			m = next(t, results, "stop", 5*time.Second)
			if !strings.Contains(string(m.Data), `"open_streams":0`) {
				t.Fatalf("stop report %s", m.Data)
			}
			if !gone(pid) {
				t.Fatalf("plugin process %d still exists after Close", pid)
			}
			stats := st.Stats()
			if stats.Enqueued != n+1 || stats.Dropped != 0 || stats.Sent != n+1 || stats.Results != 3 || stats.Starts != 1 || stats.Failures != 0 {
				t.Fatalf("stats %+v", stats)
			}
			if tt.batch > 1 && stats.Batches > n/4 {
				t.Errorf("batched: %d messages for %d packets", stats.Batches, n)
			}
			for _, want := range []string{"msg=configured", "hello=world", `msg="a plain stderr line"`, "plugin_output=stderr", "stage closed"} {
				if !logs.contains(want) {
					t.Errorf("log lacks %q:\n%s", want, logs.String())
				}
			}
			goleak.VerifyNone(t, leaks)
		})
	}
}

var startedPID = regexp.MustCompile(`msg="plugin started" pid=(\d+)`)

// TestRefused checks that plugins that cannot work are refused at start
// with a message saying why, leaving nothing running.
func TestRefused(t *testing.T) {
	bin := build(t, "internal/testplugin")
	tests := []struct {
		name, mode, want string
		edit             func(*Settings)
	}{
		{"old protocol", "old", "another plugin protocol version", nil},
		{"future api", "badapi", "speaks plugin API 100", nil},
		{"configuration refused", "refuse", "refusing on purpose", nil},
		{"consumes nothing", "nothing", "neither packets nor bites", nil},
		{"not a plugin", "", "start", func(s *Settings) { s.Path = "/bin/true"; s.Args = nil }},
		{"missing program", "", "no such file", func(s *Settings) { s.Path = "/nonexistent/plugin" }},
		{"bad conversation pattern", "echo", "pattern", func(s *Settings) { s.Conversations = []string{"["} }},
		{"no conversations", "echo", "conversations is empty", func(s *Settings) { s.Conversations = nil }},
		{"bad subject", "echo", "not a NATS subject", func(s *Settings) { s.Subjects = []string{"a b"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			s := testSettings(bin, "-mode", tt.mode)
			s.StartTimeout = pipeline.Duration(5 * time.Second)
			if tt.edit != nil {
				tt.edit(&s)
			}
			st, err := New(pipeline.Env{}, "refused", s)
			if err == nil {
				_ = st.Close(context.Background())
				t.Fatal("plugin accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want one containing %q", err, tt.want)
			}
			goleak.VerifyNone(t, leaks)
		})
	}
}

// TestFailures checks that a plugin that crashes, hangs, is slow or sends
// garbage never blocks the track, and is restarted, disabled or killed.
func TestFailures(t *testing.T) {
	bin := build(t, "internal/testplugin")
	tests := []struct {
		name  string
		args  []string
		edit  func(*Settings)
		check func(t *testing.T, st *Stage, send func(n int), logs *logBuffer)
	}{
		{"crash: restarted with new processes, then disabled", []string{"-mode", "crash", "-after", "5"},
			func(s *Settings) { s.MaxRestarts = 2; s.Flush = 0; s.Batch = 1 },
			func(t *testing.T, st *Stage, send func(int), logs *logBuffer) {
				testutil.Eventually(t, 20*time.Second, "disabled", func() bool {
					send(1)
					return st.Stats().Disabled
				})
				s := st.Stats()
				pids := map[int]bool{}
				for _, m := range startedPID.FindAllStringSubmatch(logs.String(), -1) {
					pid, _ := strconv.Atoi(m[1])
					pids[pid] = true
				}
				if s.Starts != 3 || s.Failures != 3 || len(pids) != 3 {
					t.Fatalf("stats %+v, pids %v", s, pids)
				}
				for pid := range pids {
					if !gone(pid) {
						t.Errorf("crashed plugin %d still exists", pid)
					}
				}
				if !logs.contains("plugin disabled") || !logs.contains("crashing on purpose") {
					t.Fatalf("logs:\n%s", logs)
				}
				before := st.Stats().Enqueued
				send(50)
				if st.Stats().Enqueued != before {
					t.Fatal("a disabled plugin is still fed")
				}
			}},
		{"hang: queue overflows, plugin killed", []string{"-mode", "hang", "-after", "3"},
			func(s *Settings) { s.MaxRestarts = 0; s.Queue = 64; s.Flush = 0; s.Batch = 1 },
			func(t *testing.T, st *Stage, send func(int), logs *logBuffer) {
				pid := st.Stats().PID
				testutil.Eventually(t, 20*time.Second, "hung plugin detected", func() bool {
					send(20) // never blocks, even while the plugin hangs
					return st.Stats().Disabled
				})
				if s := st.Stats(); s.Dropped == 0 || s.Failures != 1 {
					t.Fatalf("stats %+v", s)
				}
				testutil.Eventually(t, 10*time.Second, "hung process gone", func() bool { return gone(pid) })
				if !logs.contains("hung") && !logs.contains("health check") {
					t.Fatalf("logs:\n%s", logs)
				}
			}},
		{"slow: drops counted, plugin kept", []string{"-mode", "slow", "-delay", "2ms"},
			func(s *Settings) { s.Queue = 16; s.Batch = 4 },
			func(t *testing.T, st *Stage, send func(int), logs *logBuffer) {
				send(1000)
				s := st.Stats()
				if s.Dropped == 0 || s.Enqueued+s.Dropped != 1000 || s.Failures != 0 {
					t.Fatalf("stats %+v", s)
				}
				if !logs.contains("plugin queue full") {
					t.Fatalf("logs:\n%s", logs)
				}
			}},
		{"garbage results refused", []string{"-mode", "garbage"},
			func(s *Settings) { s.Conversations = []string{"conv-1"} },
			func(t *testing.T, st *Stage, send func(int), logs *logBuffer) {
				send(1)
				testutil.Eventually(t, 10*time.Second, "results judged", func() bool {
					s := st.Stats()
					return s.Rejected == 6 && s.Results+s.Unpublished == 1
				})
				if s := st.Stats(); s.Failures != 0 {
					t.Fatalf("stats %+v", s)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, map[string]string{"alice": "conv-1"})
			leaks := goleak.IgnoreCurrent()
			var logs logBuffer
			s := testSettings(bin, tt.args...)
			tt.edit(&s)
			st, err := New(pipeline.Env{Logger: logs.logger()}, "faulty", s)
			if err != nil {
				t.Fatal(err)
			}
			sink := chain(t, st, env.track("alice", 9))
			seq := uint16(0)
			var slowest time.Duration
			send := func(n int) {
				for range n {
					raw := rtpPacket(t, seq, uint32(seq)*960, 9, 30, []byte{0xf8, 0xff, 0xfe})
					seq++
					start := time.Now()
					if err := sink.WriteRTP(raw, start); err != nil {
						t.Fatal(err)
					}
					slowest = max(slowest, time.Since(start))
				}
			}
			tt.check(t, st, send, &logs)
			sink.Close()
			pid := st.Stats().PID
			if err := st.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if pid != 0 && !gone(pid) {
				t.Fatalf("plugin %d still exists after Close", pid)
			}
			// The track's goroutine was never held up by the plugin.
			if slowest > 100*time.Millisecond {
				t.Errorf("a packet took %v in the pipeline", slowest)
			}
			goleak.VerifyNone(t, leaks)
		})
	}
}

// TestCloseKillsHungPlugin checks that Close ends a plugin that does not
// finish, within stop_timeout plus the kill.
func TestCloseKillsHungPlugin(t *testing.T) {
	bin := build(t, "internal/testplugin")
	env := newEnv(t, map[string]string{"alice": "conv-1"})
	leaks := goleak.IgnoreCurrent()
	s := testSettings(bin, "-mode", "hang", "-after", "1")
	s.StallTimeout = pipeline.Duration(time.Minute) // Close, not the monitor, must end it
	s.StopTimeout = pipeline.Duration(200 * time.Millisecond)
	st, err := New(pipeline.Env{}, "hung", s)
	if err != nil {
		t.Fatal(err)
	}
	sink := chain(t, st, env.track("alice", 9))
	if err := sink.WriteRTP(rtpPacket(t, 1, 960, 9, 30, []byte{0xf8, 0xff, 0xfe}), time.Now()); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "packet sent", func() bool { return st.Stats().Sent == 1 })
	sink.Close()
	pid := st.Stats().PID
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v", d)
	}
	if !gone(pid) {
		t.Fatalf("hung plugin %d survived Close", pid)
	}
	goleak.VerifyNone(t, leaks)
}

// TestRegistry builds a plugin stage from pipeline YAML.
func TestRegistry(t *testing.T) {
	bin := build(t, "internal/testplugin")
	tests := []struct{ name, yaml, wantErr string }{
		{"ok", "stages:\n  - name: echo\n    kind: plugin\n    settings:\n      path: " + bin +
			"\n      args: [-mode, echo]\n      config: {subject: plugin.echo, hello: yaml}\n      conversations: [\"*\"]\n      queue: 64\n      batch: 8\n      flush: 2ms\n", ""},
		{"unknown setting", "stages:\n  - name: echo\n    kind: plugin\n    settings: {path: " + bin + ", colour: red}\n", "colour"},
		{"no path", "stages:\n  - name: echo\n    kind: plugin\n", "path is empty"},
		{"bad batch", "stages:\n  - name: echo\n    kind: plugin\n    settings: {path: " + bin + ", batch: 0}\n", "batch"},
		{"plugin config refused", "stages:\n  - name: echo\n    kind: plugin\n    settings:\n      path: " + bin +
			"\n      config: {nope: 1}\n", "unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			r := pipeline.NewRegistry()
			Register(r)
			c, err := pipeline.ParseConfig(strings.NewReader(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			p, err := r.Build(c, pipeline.Env{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else if err := p.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			goleak.VerifyNone(t, leaks)
		})
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct {
		pattern, subject string
		valid, match     bool
	}{
		{"plugin.rec", "plugin.rec", true, true},
		{"plugin.rec.>", "plugin.rec.x.y", true, true},
		{"plugin.rec.>", "plugin.rec", true, false},
		{"plugin.*", "plugin.rec", true, true},
		{"plugin.*", "plugin.rec.x", true, false},
		{"transcription", "transcription", true, true},
		{"bite", "a b", false, false},
		{"x", "a..b", false, false},
		{"x", "a.>", false, false},
	}
	for _, tt := range tests {
		if got := validSubject(tt.subject, false); got != tt.valid {
			t.Errorf("validSubject(%q) = %v", tt.subject, got)
		}
		if got := tt.valid && subjectMatches(tt.pattern, tt.subject); got != tt.match {
			t.Errorf("subjectMatches(%q, %q) = %v", tt.pattern, tt.subject, got)
		}
	}
}

func TestLogWriter(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
	}{
		{"slog json", `{"time":"x","level":"WARN","msg":"disk full","dir":"/tmp"}` + "\n", []string{"level=WARN", `msg="disk full"`, "dir=/tmp"}},
		{"hclog json", `{"@level":"error","@message":"boom","@timestamp":"x"}` + "\n", []string{"level=ERROR", "msg=boom"}},
		{"plain, split writes", "panic: oh", []string{"level=WARN", `msg="panic: oh no"`}},
		{"blank lines dropped", "\n\n", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs logBuffer
			w := newLogWriter(logs.logger(), "stderr")
			_, _ = w.Write([]byte(tt.in))
			if tt.name == "plain, split writes" {
				_, _ = w.Write([]byte(" no\n"))
			}
			for _, want := range tt.want {
				if !logs.contains(want) {
					t.Errorf("log %q lacks %q", logs.String(), want)
				}
			}
			if tt.want == nil && logs.String() != "" {
				t.Errorf("logged %q", logs.String())
			}
		})
	}
}
