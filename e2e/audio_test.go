package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// speech describes a fake microphone recording: silence, then utterances
// separated by silences, then silence.
type speech struct {
	Voice      string   // espeak-ng voice, e.g. "en-gb"
	Phrases    []string // one utterance each
	Lead, Gap  float64  // seconds of silence before the first and between utterances
	Trail      float64  // seconds of silence after the last
	Utterances []float64
	Path       string
}

// makeSpeech writes s as 48 kHz mono 16-bit WAV in dir, each utterance
// spoken by espeak-ng, trimmed of espeak's own silence and normalised to
// -3 dBFS; it records each utterance's length in s.Utterances.
func makeSpeech(t *testing.T, dir, name string, s *speech) {
	t.Helper()
	run := func(prog string, args ...string) string {
		t.Helper()
		out, err := exec.Command(prog, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	silence := func(file string, sec float64) string {
		p := filepath.Join(dir, file)
		run("sox", "-n", "-r", "48000", "-c", "1", "-b", "16", p, "trim", "0", fmt.Sprintf("%.3f", sec))
		return p
	}
	parts := []string{silence(name+"-lead.wav", s.Lead)}
	gap := silence(name+"-gap.wav", s.Gap)
	s.Utterances = nil
	for i, phrase := range s.Phrases {
		raw := filepath.Join(dir, fmt.Sprintf("%s-raw%d.wav", name, i))
		utt := filepath.Join(dir, fmt.Sprintf("%s-utt%d.wav", name, i))
		run("espeak-ng", "-v", s.Voice, "-s", "165", "-w", raw, phrase)
		run("sox", raw, "-r", "48000", "-c", "1", "-b", "16", utt,
			"silence", "1", "0.02", "0.5%", "reverse", "silence", "1", "0.02", "0.5%", "reverse", "norm", "-3")
		d, err := strconv.ParseFloat(strings.TrimSpace(run("soxi", "-D", utt)), 64)
		if err != nil {
			t.Fatalf("soxi %s: %v", utt, err)
		}
		s.Utterances = append(s.Utterances, d)
		if i > 0 {
			parts = append(parts, gap)
		}
		parts = append(parts, utt)
	}
	parts = append(parts, silence(name+"-trail.wav", s.Trail))
	s.Path = filepath.Join(dir, name+".wav")
	run("sox", append(parts, s.Path)...)
}

// total is the recording's length in seconds.
func (s *speech) total() float64 {
	d := s.Lead + s.Trail
	for i, u := range s.Utterances {
		if i > 0 {
			d += s.Gap
		}
		d += u
	}
	return d
}
