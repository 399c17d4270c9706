package testmedia

// Speech and tone fixtures for the audio mixing tests: real libopus
// packets (opusenc) of espeak-ng phrases or sox tones, with the 48 kHz
// source they were encoded from, to cross-correlate a decoded mix against.
// Without espeak-ng, sox or opusenc (Debian espeak-ng, sox, opus-tools)
// they skip the test, unless CI is set.

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

	"github.com/thesyncim/gopus"

	"github.com/beepvoice/router/oggopus"
)

// frameSamples is one 20 ms Opus frame at 48 kHz.
const frameSamples = 960

// Voice is one speech fixture: a phrase spoken by espeak-ng with one voice
// and pitch, resampled by sox to 48 kHz mono and encoded by opusenc (real
// libopus packets, 20 ms frames).
type Voice struct {
	Name  string // espeak-ng voice
	Pitch int    // espeak-ng pitch, 0..99
	Text  string
}

// Speech is what a voice or tone fixture yields.
type Speech struct {
	PCM     []float32 // the 48 kHz source the encoder was given
	Packets [][]byte  // opusenc's packets, 20 ms each
	PreSkip int       // decoder delay of the Ogg stream, in samples
}

// VoiceA, VoiceB and VoiceC are the three speakers of the mixing tests: different voices, pitches and
// phrases, so that each is distinguishable by cross-correlation.
var (
	VoiceA = Voice{"en-us", 20, "please call me back tomorrow morning, the report is ready and we can talk about the new project"}
	VoiceB = Voice{"en-gb", 70, "can you hear me now? the weather is nice this afternoon and i am going for a walk"}
	VoiceC = Voice{"en-us+f3", 95, "thank you very much for your help, where are you going tonight after the meeting"}
)

// Tone is a fixture of a sine tone made by sox, for the tests that need
// continuous sound (every frame audible) or an exact level.
type Tone struct {
	Freq    int // Hz
	GainDB  int // dBFS of the peak: 0 is full scale
	Seconds int
}

var speechFixtures sync.Map // Voice or Tone -> *speechResult

type speechResult struct {
	once sync.Once
	s    Speech
	err  error
}

// requireSpeechTools skips or fails tb, as the package documentation says,
// unless espeak-ng, sox and opusenc are installed.
func requireSpeechTools(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"espeak-ng", "sox", "opusenc"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing(tb, tool+" is not installed (Debian: apt-get install espeak-ng sox opus-tools)")
		}
	}
}

// Speak returns v's fixture: v's phrase spoken by espeak-ng, made once
// per test process.
func Speak(tb testing.TB, v Voice) Speech {
	tb.Helper()
	requireSpeechTools(tb)
	r, _ := speechFixtures.LoadOrStore(v, &speechResult{})
	f := r.(*speechResult)
	f.once.Do(func() {
		f.s, f.err = makeFixture([]string{"espeak-ng", "-v", v.Name, "-p", fmt.Sprint(v.Pitch), "-s", "165", "-w", "$raw", v.Text},
			// -3 dBFS peak: loud but unclipped, as a client's AGC leaves speech.
			"gain", "-n", "-3")
	})
	if f.err != nil {
		tb.Fatalf("fixture %v: %v", v, f.err)
	}
	return f.s
}

// MakeTone returns tn's fixture, made once per test process; its opusenc
// packets carry in-band FEC (expecting 20% loss), as every fixture's.
func MakeTone(tb testing.TB, tn Tone) Speech {
	tb.Helper()
	requireSpeechTools(tb)
	r, _ := speechFixtures.LoadOrStore(tn, &speechResult{})
	f := r.(*speechResult)
	f.once.Do(func() {
		f.s, f.err = makeFixture([]string{"sox", "-n", "-r", "48000", "-c", "1", "-b", "16", "$raw",
			"synth", fmt.Sprint(tn.Seconds), "sine", fmt.Sprint(tn.Freq), "gain", fmt.Sprint(tn.GainDB)})
	})
	if f.err != nil {
		tb.Fatalf("fixture %v: %v", tn, f.err)
	}
	return f.s
}

// makeFixture runs source (with $raw standing for the WAV it writes),
// converts that to 48 kHz mono 16-bit with sox (effects appended), and
// encodes it with opusenc at 32 kb/s in 20 ms frames.
func makeFixture(source []string, effects ...string) (Speech, error) {
	dir, err := os.MkdirTemp("", "testmedia-speech-")
	if err != nil {
		return Speech{}, err
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
			return Speech{}, fmt.Errorf("%s: %w: %s", s[0], err, out)
		}
	}
	var out Speech
	b, err := os.ReadFile(f32)
	if err != nil {
		return Speech{}, err
	}
	out.PCM = make([]float32, len(b)/4)
	for i := range out.PCM {
		out.PCM[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	data, err := os.ReadFile(opus)
	if err != nil {
		return Speech{}, err
	}
	rd, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		return Speech{}, fmt.Errorf("read opusenc output: %w", err)
	}
	out.PreSkip = int(rd.Head.PreSkip)
	for {
		p, _, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Speech{}, fmt.Errorf("read opusenc output: %w", err)
		}
		if d, err := oggopus.PacketDuration(p); err != nil || d != frameSamples {
			return Speech{}, fmt.Errorf("opusenc packet %d: %d samples, %v", len(out.Packets), d, err)
		}
		out.Packets = append(out.Packets, p)
	}
	return out, nil
}

// DecodeOpus decodes 20 ms Opus packets in order into 48 kHz mono PCM, one
// frame per packet; a nil packet is a lost one, concealed by the decoder.
// It fails tb on a packet the decoder refuses.
func DecodeOpus(tb testing.TB, packets [][]byte) []float32 {
	tb.Helper()
	dec, err := gopus.NewDecoder(gopus.DefaultDecoderConfig(48000, 1))
	if err != nil {
		tb.Fatal(err)
	}
	buf := make([]float32, frameSamples)
	out := make([]float32, 0, len(packets)*frameSamples)
	for i, p := range packets {
		n, err := dec.Decode(p, buf)
		if err != nil || n != frameSamples {
			tb.Fatalf("decode packet %d of %d bytes: %d samples, %v", i, len(p), n, err)
		}
		out = append(out, buf...)
	}
	return out
}

// Correlation is the normalized cross-correlation of ref with x delayed by
// lag samples (x[i+lag] against ref[i]), over their overlap.
func Correlation(ref, x []float32, lag int) float64 {
	var xy, xx, yy float64
	for i, r := range ref {
		j := i + lag
		if j < 0 {
			continue
		}
		if j >= len(x) {
			break
		}
		v := float64(x[j])
		xy += float64(r) * v
		xx += float64(r) * float64(r)
		yy += v * v
	}
	if xx == 0 || yy == 0 {
		return 0
	}
	return xy / math.Sqrt(xx*yy)
}

// BestLag finds where ref lies in x: the lag in [minLag, maxLag] of the
// largest correlation, searched on a 1/8 decimation first and refined at
// full rate (fast enough for seconds of audio and lags of a second). It
// returns that correlation and the lag.
func BestLag(ref, x []float32, minLag, maxLag int) (best float64, lag int) {
	const d = 8
	dec := func(s []float32) []float32 {
		out := make([]float32, len(s)/d)
		for i := range out {
			var sum float32
			for _, v := range s[i*d : i*d+d] {
				sum += v
			}
			out[i] = sum / d
		}
		return out
	}
	rd, xd := dec(ref), dec(x)
	coarse, best := minLag, math.Inf(-1)
	for l := minLag / d; l <= maxLag/d; l++ {
		if c := Correlation(rd, xd, l); c > best {
			best, coarse = c, l*d
		}
	}
	best = math.Inf(-1)
	for l := coarse - 2*d; l <= coarse+2*d; l++ {
		if c := Correlation(ref, x, l); c > best {
			best, lag = c, l
		}
	}
	return best, lag
}

// MaxAbsCorrelation is the largest magnitude of the correlation of ref and
// x at the lags within radius of center: how much of ref is in x near
// where it would be.
func MaxAbsCorrelation(ref, x []float32, center, radius int) float64 {
	var m float64
	for l := center - radius; l <= center+radius; l++ {
		m = math.Max(m, math.Abs(Correlation(ref, x, l)))
	}
	return m
}
