package mix

import (
	"math"
	"testing"
)

// Signal measures for the tests: alignment by cross-correlation, SNR,
// segmental SNR and log-spectral distance. Written here because they are
// a few lines each and no Go library of the module's dependencies has them.

// dot is the inner product of a and b over their common length.
func dot(a, b []float32) float64 {
	n := min(len(a), len(b))
	var s float64
	for i := range n {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}

// shift returns x delayed by lag samples (advanced when lag < 0).
func shift(x []float32, lag int) []float32 {
	if lag >= 0 {
		if lag >= len(x) {
			return nil
		}
		return x[lag:]
	}
	return append(make([]float32, -lag), x...)
}

// correlation is the normalized cross-correlation of ref and x at the
// lag (0..maxLag: x lags ref) where its magnitude is largest, and that lag.
func correlation(ref, x []float32, maxLag int) (best float64, lag int) {
	for l := 0; l <= maxLag; l++ {
		y := shift(x, l)
		n := min(len(ref), len(y))
		e := dot(ref[:n], ref[:n]) * dot(y[:n], y[:n])
		if e == 0 {
			continue
		}
		c := dot(ref[:n], y[:n]) / math.Sqrt(e)
		if math.Abs(c) > math.Abs(best) {
			best, lag = c, l
		}
	}
	return best, lag
}

// snr is the signal-to-noise ratio of x against ref, in dB.
func snr(ref, x []float32) float64 {
	n := min(len(ref), len(x))
	var s, e float64
	for i := range n {
		d := float64(ref[i]) - float64(x[i])
		s += float64(ref[i]) * float64(ref[i])
		e += d * d
	}
	if e == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(s/e)
}

// segSNR is the mean SNR of ref's active 20 ms frames (above -50 dBFS),
// each clamped to [-10, 35] dB as speech-quality measures do.
func segSNR(ref, x []float32) float64 {
	n := min(len(ref), len(x))
	var sum float64
	var frames int
	for at := 0; at+FrameSamples <= n; at += FrameSamples {
		r, y := ref[at:at+FrameSamples], x[at:at+FrameSamples]
		if rms(r) < 0.00316 {
			continue
		}
		sum += math.Max(-10, math.Min(35, snr(r, y)))
		frames++
	}
	if frames == 0 {
		return 0
	}
	return sum / float64(frames)
}

func rms(x []float32) float64 {
	if len(x) == 0 {
		return 0
	}
	return math.Sqrt(dot(x, x) / float64(len(x)))
}

// lsd is the mean log-spectral distance in dB between ref and x over
// ref's active 512-sample frames (Hann window, a plain DFT: slow but
// enough for a few seconds of test audio).
func lsd(ref, x []float32) float64 {
	const size, bins = 512, 257
	win := make([]float64, size)
	cos := make([]float64, size)
	sin := make([]float64, size)
	for i := range size {
		win[i] = 0.5 - 0.5*math.Cos(2*math.Pi*float64(i)/size)
		cos[i] = math.Cos(2 * math.Pi * float64(i) / size)
		sin[i] = math.Sin(2 * math.Pi * float64(i) / size)
	}
	power := func(s []float32, out []float64) {
		for k := range bins {
			var re, im float64
			for i := range size {
				v := float64(s[i]) * win[i]
				j := (k * i) % size
				re += v * cos[j]
				im -= v * sin[j]
			}
			out[k] = re*re + im*im + 1e-10
		}
	}
	n := min(len(ref), len(x))
	pr, px := make([]float64, bins), make([]float64, bins)
	var sum float64
	var frames int
	for at := 0; at+size <= n; at += size {
		if rms(ref[at:at+size]) < 0.00316 {
			continue
		}
		power(ref[at:at+size], pr)
		power(x[at:at+size], px)
		var d float64
		for k := range bins {
			v := 10 * math.Log10(pr[k]/px[k])
			d += v * v
		}
		sum += math.Sqrt(d / bins)
		frames++
	}
	if frames == 0 {
		return 0
	}
	return sum / float64(frames)
}

func TestSignalMeasures(t *testing.T) {
	tone := make([]float32, 4800)
	for i := range tone {
		tone[i] = float32(0.5 * math.Sin(2*math.Pi*440*float64(i)/48000))
	}
	tests := []struct {
		name     string
		got      float64
		min, max float64
	}{
		{"snr of itself", math.Min(snr(tone, tone), 999), 999, 999},
		{"snr of half", snr(tone, scaled(tone, 0.5)), 5.9, 6.1},
		{"segmental snr of half", segSNR(tone, scaled(tone, 0.5)), 5.9, 6.1},
		{"lsd of itself", lsd(tone, tone), 0, 0.001},
		{"correlation of delayed copy", func() float64 { c, _ := correlation(tone, shift(tone, -37), 100); return c }(), 0.99, 1},
		{"lag of delayed copy", func() float64 { _, l := correlation(tone, shift(tone, -37), 100); return float64(l) }(), 37, 37},
	}
	for _, tt := range tests {
		if tt.got < tt.min || tt.got > tt.max {
			t.Errorf("%s = %v, want [%v, %v]", tt.name, tt.got, tt.min, tt.max)
		}
	}
}

func scaled(x []float32, g float32) []float32 {
	y := make([]float32, len(x))
	for i := range x {
		y[i] = x[i] * g
	}
	return y
}
