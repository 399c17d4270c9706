package mix

import "math"

// limiter is a soft-knee peak limiter with instant attack and a slow
// release, one per mix. Written here because no Go library we could use
// has one: gopus's PCMSoftClip (libopus's opus_pcm_soft_clip) only bends
// the samples that exceed full scale, which distorts a loud sum.
//
// Its envelope follows each sample's magnitude up at once and decays with
// a 300 ms time constant; the gain maps the envelope through a soft knee
// that starts at -6 dBFS and approaches limiterCeiling without reaching it.
// Since the envelope is never below the sample, no output sample reaches
// the ceiling; since it decays slowly, the gain stays steady on sustained
// loud audio (two people talking at once), so the mix does not pump.
type limiter struct {
	env float32
}

const (
	limiterKnee    = 0.5 // -6 dBFS: below, the limiter is transparent
	limiterCeiling = 0.9 // about -0.9 dBFS, leaving headroom for the codec
	limiterRelease = 0.3 // seconds, time constant of the envelope's decay
)

// limiterDecay is the envelope's decay per sample.
var limiterDecay = float32(math.Exp(-1 / (limiterRelease * SampleRate)))

// process limits x in place.
func (l *limiter) process(x []float32) {
	env := l.env
	for i, v := range x {
		a := v
		if a < 0 {
			a = -a
		}
		env *= limiterDecay
		if a > env {
			env = a
		}
		if env > limiterKnee {
			// A rational soft knee: slope 1 at the knee, limit the ceiling.
			over := env - limiterKnee
			out := limiterKnee + over/(1+over/(limiterCeiling-limiterKnee))
			x[i] = v * (out / env)
		}
	}
	l.env = env
}

// reset forgets the envelope.
func (l *limiter) reset() { l.env = 0 }

// audioLevel is the RFC 6464 level of x: its RMS in -dBov (0 is full
// scale, 127 is silence or quieter), rounded.
func audioLevel(x []float32) uint8 {
	var sum float64
	for _, v := range x {
		sum += float64(v) * float64(v)
	}
	if sum == 0 {
		return 127
	}
	db := -10 * math.Log10(sum/float64(len(x)))
	return uint8(math.Round(math.Max(0, math.Min(127, db))))
}
