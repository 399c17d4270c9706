package plugins

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/pipeline"
)

type recording struct {
	Conversation string    `json:"conversation"`
	User         string    `json:"user"`
	Client       string    `json:"client"`
	SSRC         uint32    `json:"ssrc"`
	Start        time.Time `json:"start"`
	Duration     float64   `json:"duration"`
	File         string    `json:"file"`
	Sidecar      string    `json:"sidecar"`
}

// TestRecorder records a track through the recorder plugin and checks the
// segments, their sidecars, and that opusinfo and opusdec accept them
// without a warning.
func TestRecorder(t *testing.T) {
	bin := build(t, "recorder")
	nc := startNATS(t)
	results := subscribe(t, nc, "plugin.recorder")
	env := newEnv(t, map[string]string{"alice": "conv-1", "bob": "secret-1"})
	leaks := goleak.IgnoreCurrent()
	dir := t.TempDir()

	s := testSettings(bin, "-dir", dir)
	s.Config = map[string]any{"segment": "1s"}
	s.Conversations = []string{"conv-*"}
	st, err := New(pipeline.Env{NATS: nc}, "recorder", s)
	if err != nil {
		t.Fatal(err)
	}
	pid := st.Stats().PID

	alice := chain(t, st, env.track("alice", 11))
	bob := chain(t, st, env.track("bob", 12))
	start := time.Unix(1_700_000_000, 0)
	ts := uint32(123456)
	for i := range 150 { // 3 s of 20 ms packets, with a 500 ms DTX pause after 1.2 s
		if i == 60 {
			ts += 500 * 48
		}
		at := start.Add(time.Duration(i) * 20 * time.Millisecond)
		for _, tr := range []struct {
			sink interface {
				WriteRTP([]byte, time.Time) error
			}
			ssrc uint32
		}{{alice, 11}, {bob, 12}} {
			if err := tr.sink.WriteRTP(rtpPacket(t, uint16(i), ts, tr.ssrc, 40, []byte{0xf8, 0xff, 0xfe}), at); err != nil {
				t.Fatal(err)
			}
		}
		ts += 960
	}
	alice.Close()
	bob.Close()

	// 3.5 s of audio in 1 s segments: 1, 1, 1, 0.5.
	var recs []recording
	for len(recs) < 4 {
		m := next(t, results, "recording", 10*time.Second)
		var r recording
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if err := st.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Fatalf("recorder %d still exists after Close", pid)
	}
	goleak.VerifyNone(t, leaks)

	wantLen := []float64{1, 1, 1, 0.5}
	for i, r := range recs {
		if r.Conversation != "conv-1" || r.User != "alice" || r.Client != "alice-phone" || r.SSRC != 11 {
			t.Errorf("segment %d: %+v", i, r)
		}
		// The sidecar's duration is what plays: minus the 312-sample pre-skip.
		if want := wantLen[i] - 312.0/48000; abs(r.Duration-want) > 0.0005 {
			t.Errorf("segment %d lasts %.4f s, want %.4f", i, r.Duration, want)
		}
		if rel, err := filepath.Rel(dir, r.File); err != nil || !strings.HasPrefix(rel, "conv-1/alice/") {
			t.Errorf("segment %d at %s", i, r.File)
		}
		var side recording
		data, err := os.ReadFile(r.Sidecar)
		if err == nil {
			err = json.Unmarshal(data, &side)
		}
		if err != nil || side.File != r.File || side.Duration != r.Duration || !side.Start.Equal(r.Start) {
			t.Errorf("sidecar %s: %s (%v)", r.Sidecar, data, err)
		}
		checkOpusTools(t, r.File, r.Duration)
	}
	if !recs[0].Start.Equal(start) {
		t.Errorf("first segment starts %v, want %v", recs[0].Start, start)
	}
	if parts, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*.part")); len(parts) > 0 {
		t.Errorf("unfinished files left: %v", parts)
	}
	if _, err := os.Stat(filepath.Join(dir, "secret-1")); !os.IsNotExist(err) {
		t.Error("a conversation the plugin does not see was recorded")
	}
}

var playbackLength = regexp.MustCompile(`Playback length: *(\d+)m:([\d.]+)s`)

// checkOpusTools runs opusinfo and opusdec on file, if installed, and fails
// on any warning or a wrong length.
func checkOpusTools(t *testing.T, file string, seconds float64) {
	t.Helper()
	if _, err := exec.LookPath("opusinfo"); err != nil {
		t.Log("opusinfo not installed (Debian opus-tools): files not checked with it")
		return
	}
	out, err := exec.Command("opusinfo", file).CombinedOutput()
	if err != nil || strings.Contains(strings.ToLower(string(out)), "warning") {
		t.Errorf("opusinfo %s: %v\n%s", file, err, out)
	}
	m := playbackLength.FindStringSubmatch(string(out))
	if m == nil {
		t.Errorf("opusinfo: no playback length:\n%s", out)
	} else {
		min, _ := strconv.Atoi(m[1])
		sec, _ := strconv.ParseFloat(m[2], 64)
		if got := float64(min)*60 + sec; abs(got-seconds) > 0.01 {
			t.Errorf("opusinfo: %v s, want %v", got, seconds)
		}
	}
	out, err = exec.Command("opusdec", "--quiet", file, os.DevNull).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("opusdec %s: %v\n%s", file, err, out)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}
