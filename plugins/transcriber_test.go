package plugins

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/stages"
)

// phrases are spoken by espeak-ng and must come back as text.
var phrases = []string{
	"please call me back tomorrow morning",
	"can you hear me now",
	"thank you very much for your help",
	"i will send you the report today",
	"let us talk about the new project",
	"the weather is nice this afternoon",
	"good morning everyone",
	"where are you going tonight",
}

// espeakVoice is the espeak-ng voice that PocketSphinx's en-us model
// recognises best among those tried (see docs/plugins.md).
var espeakVoice = []string{"-v", "en-us+klatt", "-s", "160"}

const pocketsphinxModel = "/usr/share/pocketsphinx/model/en-us/en-us"

// TestTranscriber speaks phrases with espeak-ng, encodes them with opusenc,
// sends them as RTP through the real bite chunker and the transcriber
// plugin, and measures word accuracy on the transcripts published on NATS.
func TestTranscriber(t *testing.T) {
	for _, tool := range []string{"espeak-ng", "opusenc", "pocketsphinx_continuous"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian espeak-ng, opus-tools, pocketsphinx, pocketsphinx-en-us)", tool)
		}
	}
	if _, err := os.Stat(pocketsphinxModel); err != nil {
		t.Skip("PocketSphinx en-us model not installed (Debian pocketsphinx-en-us)")
	}
	bin := build(t, "transcriber")
	packets := speak(t, phrases)

	nc := startNATS(t)
	results := subscribe(t, nc, "transcription")
	users := map[string]string{}
	for i := range phrases {
		users[fmt.Sprintf("speaker-%d", i)] = "conv-1"
	}
	env := newEnv(t, users)
	leaks := goleak.IgnoreCurrent()

	s := testSettings(bin)
	s.Config = map[string]any{"workers": 2}
	s.Subjects = []string{"transcription"}
	s.StopTimeout = pipeline.Duration(60 * time.Second)
	st, err := New(pipeline.Env{NATS: nc}, "transcriber", s)
	if err != nil {
		t.Fatal(err)
	}
	chunk := *stagesChunkerDefaults()
	chunker, err := stages.NewChunker(chunk, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i, pkts := range packets {
		tr := env.track(fmt.Sprintf("speaker-%d", i), uint32(100+i))
		sink := chain(t, st, tr, namedStage{"chunker", chunker})
		ts := uint32(i * 1000)
		at := time.Unix(1_700_000_000, 0)
		for j, p := range pkts {
			// No audio level extension: the chunker takes every packet as
			// speech, and the track's end closes the bite.
			if err := sink.WriteRTP(rtpPacket(t, uint16(j), ts, tr.SSRC, -1, p), at); err != nil {
				t.Fatal(err)
			}
			d, _ := oggopus.PacketDuration(p)
			ts += uint32(d)
			at = at.Add(time.Duration(d) * time.Second / 48000)
		}
		sink.Close()
	}

	got := map[string]string{}
	for len(got) < len(phrases) {
		m := next(t, results, "transcript", 90*time.Second)
		var tr struct {
			Conversation, User, Text string
		}
		if err := json.Unmarshal(m.Data, &tr); err != nil {
			t.Fatal(err)
		}
		if tr.Conversation != "conv-1" || m.Header.Get(HeaderUser) != tr.User {
			t.Errorf("transcript %s headers %v", m.Data, m.Header)
		}
		got[tr.User] = tr.Text
	}
	elapsed := time.Since(start)
	if err := st.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, leaks)

	var words, correct int
	for i, ref := range phrases {
		hyp := got[fmt.Sprintf("speaker-%d", i)]
		n := len(strings.Fields(ref))
		c := max(n-wordDistance(strings.Fields(ref), strings.Fields(hyp)), 0)
		words += n
		correct += c
		t.Logf("%3.0f%%  %-38q → %q", 100*float64(c)/float64(n), ref, hyp)
	}
	acc := float64(correct) / float64(words)
	t.Logf("word accuracy %.0f%% (%d of %d words), %d bites in %v", 100*acc, correct, words, len(phrases), elapsed.Round(time.Millisecond))
	if acc < 0.5 {
		t.Errorf("word accuracy %.0f%% is below 50%%", 100*acc)
	}
}

func stagesChunkerDefaults() *stages.ChunkerSettings {
	r := pipeline.NewRegistry()
	stages.Register(r)
	c, err := r.Config(stages.ChunkerKind)
	if err != nil {
		panic(err)
	}
	var s stages.ChunkerSettings
	if err := c.Stages[0].Settings.Decode(&s); err != nil {
		panic(err)
	}
	return &s
}

// speak returns, per phrase, the Opus packets of the phrase spoken by
// espeak-ng and encoded by opusenc in 20 ms frames.
func speak(t *testing.T, phrases []string) [][][]byte {
	t.Helper()
	dir := t.TempDir()
	out := make([][][]byte, len(phrases))
	errs := make([]error, len(phrases))
	var wg sync.WaitGroup
	for i, ph := range phrases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], errs[i] = speakOne(dir, i, ph)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out
}

func speakOne(dir string, i int, phrase string) ([][]byte, error) {
	wav := filepath.Join(dir, fmt.Sprintf("%d.wav", i))
	opus := filepath.Join(dir, fmt.Sprintf("%d.opus", i))
	if out, err := exec.Command("espeak-ng", append(espeakVoice, "-w", wav, phrase)...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("espeak-ng: %w: %s", err, out)
	}
	if out, err := exec.Command("opusenc", "--quiet", "--framesize", "20", wav, opus).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("opusenc: %w: %s", err, out)
	}
	data, err := os.ReadFile(opus)
	if err != nil {
		return nil, err
	}
	r, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	var pkts [][]byte
	for {
		p, _, err := r.Next()
		if errors.Is(err, io.EOF) {
			return pkts, nil
		}
		if err != nil {
			return nil, err
		}
		pkts = append(pkts, p)
	}
}

// wordDistance is the word-level Levenshtein distance.
func wordDistance(ref, hyp []string) int {
	prev := make([]int, len(hyp)+1)
	cur := make([]int, len(hyp)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ref); i++ {
		cur[0] = i
		for j := 1; j <= len(hyp); j++ {
			sub := prev[j-1]
			if ref[i-1] != hyp[j-1] {
				sub++
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, sub)
		}
		prev, cur = cur, prev
	}
	return prev[len(hyp)]
}
