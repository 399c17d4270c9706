package arbiter

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/oggopus"
)

// Each participant of the gateway tests publishes media of its own, so that
// a receiver can tell whose it got: VP8 of a size no other has (read from
// the key frame's header) and Opus of a tone no other has (every Opus
// packet is forwarded as sent: its payload names its publisher). Both are
// encoded by ffmpeg (libvpx, libopus) once per test process.

// media is what one participant publishes.
type media struct {
	width, height int
	frames        []testmedia.Frame
	opus          [][]byte
	opusSet       map[string]bool
}

// mediaSpecs are the participants' media: sizes and tones.
var mediaSpecs = []struct {
	width, height int
	tone          int
}{
	{160, 120, 440}, {192, 144, 660}, {224, 168, 880},
}

var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixtures    []*media
	fixtureErr  error
)

// removeFixtures removes the media fixtures of the gateway tests.
func removeFixtures() {
	if fixtureDir != "" {
		_ = os.RemoveAll(fixtureDir)
	}
}

// mediaFor returns participant i's media (0 ≤ i < len(mediaSpecs)),
// encoding every fixture on first use. Without ffmpeg the test is skipped,
// unless CI is set: then it fails.
func mediaFor(t *testing.T, i int) *media {
	t.Helper()
	fixtureOnce.Do(func() {
		if _, err := exec.LookPath("ffmpeg"); err != nil {
			fixtureErr = errors.New("ffmpeg not installed")
			return
		}
		fixtureDir, fixtureErr = os.MkdirTemp("", "arbiter-fixtures-")
		if fixtureErr != nil {
			return
		}
		var wg sync.WaitGroup
		fixtures = make([]*media, len(mediaSpecs))
		errs := make([]error, len(mediaSpecs))
		for i, sp := range mediaSpecs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fixtures[i], errs[i] = encodeMedia(fixtureDir, i, sp.width, sp.height, sp.tone)
			}()
		}
		wg.Wait()
		fixtureErr = errors.Join(errs...)
	})
	if fixtureErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("media fixtures: %v", fixtureErr)
		}
		t.Skipf("media fixtures: %v", fixtureErr)
	}
	m := *fixtures[i]
	m.frames = testmedia.Frames(t, filepath.Join(fixtureDir, fmt.Sprintf("video-%d.ivf", i)))
	return &m
}

// encodeMedia encodes one participant's fixtures: one second of VP8 at 30
// frames a second with a key frame every 15, and two seconds of a tone in
// 20 ms Opus packets.
func encodeMedia(dir string, i, w, h, tone int) (*media, error) {
	ivf := filepath.Join(dir, fmt.Sprintf("video-%d.ivf", i))
	ogg := filepath.Join(dir, fmt.Sprintf("audio-%d.ogg", i))
	if err := ffmpeg("-f", "lavfi", "-i", fmt.Sprintf("testsrc=size=%dx%d:rate=30", w, h), "-t", "1",
		"-c:v", "libvpx", "-g", "15", "-deadline", "realtime", "-b:v", "200k", "-f", "ivf", ivf); err != nil {
		return nil, err
	}
	if err := ffmpeg("-f", "lavfi", "-i", fmt.Sprintf("sine=frequency=%d:sample_rate=48000", tone), "-t", "2",
		"-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20", "-f", "ogg", ogg); err != nil {
		return nil, err
	}
	f, err := os.Open(ogg)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rd, err := oggopus.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ogg, err)
	}
	m := &media{width: w, height: h, opusSet: map[string]bool{}}
	for {
		p, _, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ogg, err)
		}
		m.opus = append(m.opus, p)
		m.opusSet[string(p)] = true
	}
	return m, nil
}

// ffmpeg runs ffmpeg quietly with args.
func ffmpeg(args ...string) error {
	cmd := exec.Command("ffmpeg", append([]string{"-nostdin", "-hide_banner", "-v", "error", "-y"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ffmpeg %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

// vp8Size returns the size in the header of the first VP8 key frame of
// pkts, or 0, 0 when there is none.
func vp8Size(pkts []*rtp.Packet) (w, h int) {
	for _, p := range pkts {
		var d codecs.VP8Packet
		b, err := d.Unmarshal(p.Payload)
		if err != nil || d.S != 1 || d.PID != 0 || len(b) < 10 {
			continue
		}
		if b[0]&0x01 == 0 && b[3] == 0x9d && b[4] == 0x01 && b[5] == 0x2a { // key frame, start code
			return int(b[6]) | int(b[7]&0x3f)<<8, int(b[8]) | int(b[9]&0x3f)<<8
		}
	}
	return 0, 0
}

// decodeOpus writes payloads to an Ogg Opus file and decodes it with
// opusdec (or ffmpeg without it); it returns the decoder's complaint, if
// any.
func decodeOpus(t *testing.T, payloads [][]byte) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "received.ogg")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := oggopus.NewWriter(f, oggopus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range payloads {
		if err := w.WritePacket(p); err != nil {
			return fmt.Errorf("mux: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var cmd *exec.Cmd
	if _, err := exec.LookPath("opusdec"); err == nil {
		cmd = exec.Command("opusdec", "--quiet", path, filepath.Join(t.TempDir(), "received.wav"))
	} else {
		cmd = exec.Command("ffmpeg", "-nostdin", "-v", "error", "-i", path, "-f", "null", "-")
	}
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		return fmt.Errorf("%s: %v: %s", cmd.Path, err, out)
	}
	return nil
}
