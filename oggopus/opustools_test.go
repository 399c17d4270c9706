package oggopus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// requireOpusTools skips the test unless opus-tools are installed.
func requireOpusTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"opusenc", "opusdec", "opusinfo"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("opus-tools not installed: apt-get install opus-tools (no %s on PATH)", tool)
		}
	}
}

// TestOpusTools checks streams made by a Writer with the reference tools:
// opusinfo must not warn, and opusdec must decode them to the expected
// number of samples. The audio is a tone encoded by opusenc, read back with
// a Reader and re-muxed.
func TestOpusTools(t *testing.T) {
	requireOpusTools(t)
	dir := t.TempDir()

	// One second of 440 Hz, encoded by opusenc.
	wav := filepath.Join(dir, "tone.wav")
	writeToneWAV(t, wav, 48000, 440)
	enc := filepath.Join(dir, "tone.opus")
	if out, err := exec.Command("opusenc", "--quiet", wav, enc).CombinedOutput(); err != nil {
		t.Fatalf("opusenc: %v\n%s", err, out)
	}
	data, err := os.ReadFile(enc)
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(data)) // also checks libogg's CRCs against ours
	if err != nil {
		t.Fatalf("reading opusenc output: %v", err)
	}
	var packets [][]byte
	var encSamples uint64
	var lastGranule uint64
	for {
		p, g, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading opusenc output: %v", err)
		}
		d, err := PacketDuration(p)
		if err != nil {
			t.Fatalf("opusenc packet %d: %v", len(packets), err)
		}
		encSamples += uint64(d)
		lastGranule = g
		packets = append(packets, p)
	}
	if len(packets) < 50 || r.Head.Channels != 1 {
		t.Fatalf("opusenc gave %d packets, %d channels; want 50+ mono", len(packets), r.Head.Channels)
	}
	// opusenc end-trims its last page: its granule is at most its samples.
	if lastGranule > encSamples || lastGranule+960 < 48000+uint64(r.Head.PreSkip) {
		t.Fatalf("opusenc stream: last granule %d for %d samples", lastGranule, encSamples)
	}

	const gapAfter, gapSamples = 20, 25 * 960 // a 500 ms DTX gap
	tests := []struct {
		name  string
		cfg   Config
		write func(t *testing.T, w *Writer)
		want  uint64 // samples written, before pre-skip
		tone  bool   // the output must be audible
	}{
		{"WritePacket", Config{Channels: 1, PreSkip: r.Head.PreSkip}, func(t *testing.T, w *Writer) {
			for _, p := range packets {
				if err := w.WritePacket(p); err != nil {
					t.Fatal(err)
				}
			}
		}, encSamples, true},
		{"WriteRTP with a gap, stereo header", Config{}, func(t *testing.T, w *Writer) {
			ts := uint32(0xffff_0000) // wraps around
			for i, p := range packets {
				if i == gapAfter {
					ts += gapSamples
				}
				if err := w.WriteRTP(p, ts); err != nil {
					t.Fatal(err)
				}
				d, _ := PacketDuration(p)
				ts += uint32(d)
			}
		}, encSamples + gapSamples, true},
		{"flushed every packet", Config{Channels: 1}, func(t *testing.T, w *Writer) {
			for _, p := range packets {
				if err := w.WritePacket(p); err != nil {
					t.Fatal(err)
				}
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
			}
		}, encSamples, true},
		{"silent frames only", Config{}, func(t *testing.T, w *Writer) {
			for range 100 {
				if err := w.WritePacket(SilentFrame); err != nil {
					t.Fatal(err)
				}
			}
		}, 100 * 960, false},
		{"no packet", Config{}, func(t *testing.T, w *Writer) {}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			f, err := os.Create(name + ".ogg")
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			w, err := NewWriter(f, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			tt.write(t, w)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if w.Samples() != tt.want {
				t.Errorf("Samples() = %d, want %d", w.Samples(), tt.want)
			}

			out, err := exec.Command("opusinfo", name+".ogg").CombinedOutput()
			if err != nil || strings.Contains(strings.ToLower(string(out)), "warning") {
				t.Errorf("opusinfo: %v\n%s", err, out)
			}
			if out, err := exec.Command("opusdec", "--quiet", name+".ogg", name+".wav").CombinedOutput(); err != nil {
				t.Fatalf("opusdec: %v\n%s", err, out)
			}
			pcm, channels := readWAV(t, name+".wav")
			frames := len(pcm) / channels
			want := 0
			if tt.want > uint64(w.PreSkip()) {
				want = int(tt.want) - int(w.PreSkip())
			}
			t.Logf("opusdec: %d samples (want %d), %d channels, RMS %.0f", frames, want, channels, rmsOf(pcm))
			if frames < want-960 || frames > want+960 {
				t.Errorf("opusdec gave %d samples, want %d ± 960", frames, want)
			}
			if rms := rmsOf(pcm); tt.tone && rms < 1000 || !tt.tone && rms > 10 {
				t.Errorf("decoded RMS %.1f, want tone=%v", rms, tt.tone)
			}
		})
	}
}

// rmsOf returns the root mean square of pcm.
func rmsOf(pcm []int16) float64 {
	if len(pcm) == 0 {
		return 0
	}
	sum := 0.0
	for _, s := range pcm {
		sum += float64(s) * float64(s)
	}
	return math.Sqrt(sum / float64(len(pcm)))
}

// writeToneWAV writes one second of a sine at half scale as 16-bit mono PCM.
func writeToneWAV(t *testing.T, name string, rate int, hz float64) {
	t.Helper()
	n := rate
	b := make([]byte, 44, 44+2*n)
	copy(b, "RIFF")
	binary.LittleEndian.PutUint32(b[4:], uint32(36+2*n))
	copy(b[8:], "WAVEfmt ")
	binary.LittleEndian.PutUint32(b[16:], 16)
	binary.LittleEndian.PutUint16(b[20:], 1) // PCM
	binary.LittleEndian.PutUint16(b[22:], 1) // mono
	binary.LittleEndian.PutUint32(b[24:], uint32(rate))
	binary.LittleEndian.PutUint32(b[28:], uint32(2*rate))
	binary.LittleEndian.PutUint16(b[32:], 2)
	binary.LittleEndian.PutUint16(b[34:], 16)
	copy(b[36:], "data")
	binary.LittleEndian.PutUint32(b[40:], uint32(2*n))
	for i := range n {
		s := int16(16384 * math.Sin(2*math.Pi*hz*float64(i)/float64(rate)))
		b = binary.LittleEndian.AppendUint16(b, uint16(s))
	}
	if err := os.WriteFile(name, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// readWAV returns the 16-bit samples (interleaved) and channel count of a
// WAV file as opusdec writes it.
func readWAV(t *testing.T, name string) ([]int16, int) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 12 || string(b[:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		t.Fatalf("%s: not a WAV file", name)
	}
	channels, bits := 0, 0
	b = b[12:]
	for len(b) >= 8 {
		id, size := string(b[:4]), int(binary.LittleEndian.Uint32(b[4:]))
		b = b[8:]
		if id == "data" {
			if size > len(b) {
				size = len(b) // unfinished header: the data runs to the end
			}
			if channels == 0 || bits != 16 {
				t.Fatalf("%s: %d channels of %d bits, want 16-bit PCM", name, channels, bits)
			}
			pcm := make([]int16, size/2)
			for i := range pcm {
				pcm[i] = int16(binary.LittleEndian.Uint16(b[2*i:]))
			}
			return pcm, channels
		}
		if size > len(b) {
			break
		}
		if id == "fmt " && size >= 16 {
			channels = int(binary.LittleEndian.Uint16(b[2:]))
			bits = int(binary.LittleEndian.Uint16(b[14:]))
		}
		b = b[size+size&1:]
	}
	t.Fatal(errors.New(name + ": no data chunk"))
	return nil, 0
}
