package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// spectrumJS listens for ms milliseconds, through WebAudio, to what the
// page's one receiving transceiver plays (the seed README's `pc`), and
// returns the mean level in dB of the FFT bins nearest each frequency of
// freqs.
const spectrumJS = `(async (freqs, ms) => {
  const track = pc.getReceivers().map((r) => r.track).find((t) => t && t.kind === 'audio');
  const ctx = new AudioContext();
  await ctx.resume();
  const src = ctx.createMediaStreamSource(new MediaStream([track]));
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  an.smoothingTimeConstant = 0;
  src.connect(an);
  const bins = new Float32Array(an.frequencyBinCount);
  const sums = freqs.map(() => 0);
  let n = 0;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    an.getFloatFrequencyData(bins);
    freqs.forEach((f, i) => {
      const b = Math.round(f / (ctx.sampleRate / an.fftSize));
      sums[i] += Math.max(bins[b - 1], bins[b], bins[b + 1]);
    });
    n++;
  }
  ctx.close();
  return sums.map((s) => s / n);
})(%s, %d)`

// TestMixInChromium: three users of the seed README's JavaScript (one audio
// m-line each) in one conversation; two of them play a tone each (500 and
// 1300 Hz) at once, the third is silent. The third's single line carries
// both tones: the router mixes them (mode overflow, the default).
func TestMixInChromium(t *testing.T) {
	needBrowser(t, "sox")
	dir := t.TempDir()
	tone := func(name string, freq int) string {
		p := filepath.Join(dir, name+".wav")
		args := []string{"-n", "-r", "48000", "-c", "1", "-b", "16", p, "synth", "60", "sine", fmt.Sprint(freq), "gain", "-12"}
		if freq == 0 {
			args = []string{"-n", "-r", "48000", "-c", "1", "-b", "16", p, "trim", "0", "60"}
		}
		if out, err := exec.Command("sox", args...).CombinedOutput(); err != nil {
			t.Fatalf("sox: %v\n%s", err, out)
		}
		return p
	}
	rt := startRouter(t)
	pages := pageServer(t)
	conv := "e2e-mix-" + randHex(4)
	ids := map[string]identity{"A": newIdentity(), "B": newIdentity(), "L": newIdentity()}
	for _, id := range ids {
		if err := rt.join(t.Context(), id.user, id.client, conv); err != nil {
			t.Fatal(err)
		}
	}
	bs := startBrowsers(t, map[string]string{"A": tone("a", 500), "B": tone("b", 1300), "L": tone("l", 0)})
	tabs := map[string]*tab{}
	for name, id := range ids {
		tb, err := bs[name].open(name, pageURL(pages, rt, "/seed", id.user, id.client, nil), true)
		if err != nil {
			t.Fatal(err)
		}
		tabs[name] = tb
	}
	waitConnected(t, 30*time.Second, tabs["A"], tabs["B"], tabs["L"])
	// Both tones reach L's one slot once both speak.
	if _, _, err := growth(tabs["L"], 20*time.Second, 1, minEnergy); err != nil {
		t.Fatalf("L receives nothing: %v", err)
	}
	freqs := []int{500, 1300, 3100} // the tones, and a control between nothing
	var level []float64
	err := waitFor(30*time.Second, time.Second, func() error {
		if err := tabs["L"].eval(15*time.Second, fmt.Sprintf(spectrumJS, fmt.Sprintf("[%d,%d,%d]", freqs[0], freqs[1], freqs[2]), 2000), &level); err != nil {
			return errStop{err}
		}
		t.Logf("L's line: %d Hz %.1f dB, %d Hz %.1f dB, %d Hz (control) %.1f dB", freqs[0], level[0], freqs[1], level[1], freqs[2], level[2])
		if level[0] < level[2]+20 || level[1] < level[2]+20 {
			return fmt.Errorf("L's line: %.1f dB at %d Hz, %.1f dB at %d Hz, control %.1f dB: want both tones 20 dB above it", level[0], freqs[0], level[1], freqs[1], level[2])
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
