package mix

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/beepvoice/router/oggopus"
)

// voice is one speech fixture: a phrase spoken by espeak-ng with one voice
// and pitch, resampled by sox to 48 kHz mono and encoded by opusenc (real
// libopus packets, 20 ms frames).
type voice struct {
	name  string // espeak-ng voice
	pitch int    // espeak-ng pitch, 0..99
	text  string
}

// speech is what a voice fixture yields.
type speech struct {
	pcm     []float32 // the 48 kHz source the encoder was given
	packets [][]byte  // opusenc's packets, 20 ms each
	preSkip int       // decoder delay of the Ogg stream, in samples
}

// The three speakers of the mixing tests: different voices, pitches and
// phrases, so that each is distinguishable by cross-correlation.
var (
	voiceA = voice{"en-us", 20, "please call me back tomorrow morning, the report is ready and we can talk about the new project"}
	voiceB = voice{"en-gb", 70, "can you hear me now? the weather is nice this afternoon and i am going for a walk"}
	voiceC = voice{"en-us+f3", 95, "thank you very much for your help, where are you going tonight after the meeting"}
)

// tone is a fixture of a sine tone made by sox, for the tests that need
// continuous sound (every frame audible) or an exact level.
type tone struct {
	freq    int // Hz
	gainDB  int // dBFS of the peak: 0 is full scale
	seconds int
}

var fixtures sync.Map // voice or tone -> *fixtureResult

type fixtureResult struct {
	once sync.Once
	s    speech
	err  error
}

// requireTools skips the test without espeak-ng, sox or opusenc, unless
// the environment variable CI is set: then it fails, so that CI never
// silently skips.
func requireTools(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"espeak-ng", "sox", "opusenc"} {
		if _, err := exec.LookPath(tool); err != nil {
			msg := fmt.Sprintf("%s not installed (Debian espeak-ng, sox, opus-tools)", tool)
			if os.Getenv("CI") != "" {
				tb.Fatal(msg)
			}
			tb.Skip(msg)
		}
	}
}

// speak returns v's fixture, made once per test process.
func speak(tb testing.TB, v voice) speech {
	tb.Helper()
	requireTools(tb)
	r, _ := fixtures.LoadOrStore(v, &fixtureResult{})
	f := r.(*fixtureResult)
	f.once.Do(func() {
		f.s, f.err = makeFixture([]string{"espeak-ng", "-v", v.name, "-p", fmt.Sprint(v.pitch), "-s", "165", "-w", "$raw", v.text},
			// -3 dBFS peak: loud but unclipped, as a client's AGC leaves speech.
			"gain", "-n", "-3")
	})
	if f.err != nil {
		tb.Fatalf("fixture %v: %v", v, f.err)
	}
	return f.s
}

// makeTone returns tn's fixture, made once per test process; its opusenc
// packets carry in-band FEC (expecting 20% loss).
func makeTone(tb testing.TB, tn tone) speech {
	tb.Helper()
	requireTools(tb)
	r, _ := fixtures.LoadOrStore(tn, &fixtureResult{})
	f := r.(*fixtureResult)
	f.once.Do(func() {
		f.s, f.err = makeFixture([]string{"sox", "-n", "-r", "48000", "-c", "1", "-b", "16", "$raw",
			"synth", fmt.Sprint(tn.seconds), "sine", fmt.Sprint(tn.freq), "gain", fmt.Sprint(tn.gainDB)})
	})
	if f.err != nil {
		tb.Fatalf("fixture %v: %v", tn, f.err)
	}
	return f.s
}

// makeFixture runs source (with $raw standing for the WAV it writes),
// converts that to 48 kHz mono 16-bit with sox (effects appended), and
// encodes it with opusenc at 32 kb/s in 20 ms frames.
func makeFixture(source []string, effects ...string) (speech, error) {
	dir, err := os.MkdirTemp("", "mix-fixture-")
	if err != nil {
		return speech{}, err
	}
	defer os.RemoveAll(dir)
	raw := filepath.Join(dir, "espeak.wav")
	wav := filepath.Join(dir, "48k.wav")
	f32 := filepath.Join(dir, "48k.f32")
	opus := filepath.Join(dir, "speech.opus")
	src := make([]string, len(source))
	for i, a := range source {
		if a == "$raw" {
			a = raw
		}
		src[i] = a
	}
	steps := [][]string{
		src,
		append([]string{"sox", raw, "-r", "48000", "-c", "1", "-b", "16", wav}, effects...),
		{"sox", wav, "-t", "raw", "-e", "floating-point", "-b", "32", "-L", f32},
		{"opusenc", "--quiet", "--bitrate", "32", "--framesize", "20", "--expect-loss", "20", wav, opus},
	}
	for _, s := range steps {
		if out, err := exec.Command(s[0], s[1:]...).CombinedOutput(); err != nil {
			return speech{}, fmt.Errorf("%s: %w: %s", s[0], err, out)
		}
	}
	var out speech
	b, err := os.ReadFile(f32)
	if err != nil {
		return speech{}, err
	}
	out.pcm = make([]float32, len(b)/4)
	for i := range out.pcm {
		out.pcm[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	data, err := os.ReadFile(opus)
	if err != nil {
		return speech{}, err
	}
	rd, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		return speech{}, fmt.Errorf("read opusenc output: %w", err)
	}
	out.preSkip = int(rd.Head.PreSkip)
	for {
		p, _, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return speech{}, fmt.Errorf("read opusenc output: %w", err)
		}
		if d, err := oggopus.PacketDuration(p); err != nil || d != FrameSamples {
			return speech{}, fmt.Errorf("opusenc packet %d: %d samples, %v", len(out.packets), d, err)
		}
		out.packets = append(out.packets, p)
	}
	return out, nil
}
