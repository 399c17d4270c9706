package mix

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// t0 is the mixer clock's origin in the tests.
var t0 = time.Unix(1_700_000_000, 0)

// harness runs a Mixer on its own goroutine, driven by ticks the test
// sends, and collects its output. Sending a tick returns once Run has it,
// so packets pushed before a tick are mixed by it; out is read after stop.
type harness struct {
	t     *testing.T
	m     *Mixer
	ticks chan time.Time
	out   map[string][]Frame // by Frame.Key, payloads copied
	stop  func()
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	h := &harness{t: t, ticks: make(chan time.Time), out: map[string][]Frame{}}
	cfg.Start, cfg.Ticks = t0, h.ticks
	cfg.Output = func(f Frame) {
		f.Payload = append([]byte(nil), f.Payload...)
		h.out[f.Key] = append(h.out[f.Key], f)
	}
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.m = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- m.Run(ctx) }()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
		}
	})
	return h
}

// mix mixes frame f (its tick comes when it has ended).
func (h *harness) mix(f int) { h.ticks <- at(f + 1) }

// finish stops the mixer; h.out is complete after it.
func (h *harness) finish() {
	h.stop()
	h.stop = nil
}

// at is the start of frame f on the mixer clock.
func at(f int) time.Time { return t0.Add(time.Duration(f) * FrameDuration) }

func (h *harness) push(speaker string, ts uint32, p []byte, arrival time.Time) {
	h.t.Helper()
	if err := h.m.Push(speaker, ts, p, arrival); err != nil {
		h.t.Fatalf("Push(%s, %d): %v", speaker, ts, err)
	}
}

// decodeMix checks that frames are one continuous stream (consecutive
// timestamps) and decodes it. It returns the PCM and the number of
// timestamp breaks.
func decodeMix(t *testing.T, frames []Frame) (pcm []float32, breaks int) {
	t.Helper()
	dec, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]float32, FrameSamples)
	for i, f := range frames {
		if i > 0 && f.Timestamp != frames[i-1].Timestamp+FrameSamples {
			breaks++
		}
		n, err := dec.Decode(f.Payload, buf)
		if err != nil || n != FrameSamples {
			t.Fatalf("decode mixed frame %d: %d samples, %v", i, n, err)
		}
		pcm = append(pcm, buf...)
	}
	return pcm, breaks
}

// correlationAround is the normalized cross-correlation of ref and x
// (x lagging ref) at the lag within center±radius where its magnitude
// is largest.
func correlationAround(ref, x []float32, center, radius int) (best float64, lag int) {
	for l := center - radius; l <= center+radius; l++ {
		y := shift(x, l)
		n := min(len(ref), len(y))
		e := dot(ref[:n], ref[:n]) * dot(y[:n], y[:n])
		if e == 0 {
			continue
		}
		if c := dot(ref[:n], y[:n]) / math.Sqrt(e); math.Abs(c) > math.Abs(best) {
			best, lag = c, l
		}
	}
	return best, lag
}

// mixDelay is where a source sample lands in a decoded mix when its first
// packet arrived in frame 0: the opusenc pre-skip, the jitter buffer and
// the mix encoder's lookahead.
func mixDelay(t *testing.T, s speech, jitter time.Duration) int {
	t.Helper()
	e, err := newEncoder(DefaultBitrate, DefaultExpectedLoss)
	if err != nil {
		t.Fatal(err)
	}
	return s.preSkip + int(jitter/FrameDuration)*FrameSamples + e.Lookahead()
}

// TestMixMinus: three speakers talk at once with different voices. The
// shared mix holds all three; each speaker's mix-minus holds the two
// others and not that speaker's own voice.
func TestMixMinus(t *testing.T) {
	speakers := []struct {
		id string
		s  speech
		ts uint32 // first RTP timestamp: random-looking, one wraps
	}{
		{"alice", speak(t, voiceA), 0xffff_f000},
		{"bob", speak(t, voiceB), 123_456},
		{"carol", speak(t, voiceC), 0x8000_0000},
	}
	const frames = 150 // 3 s of speech, all three at once
	h := newHarness(t, Config{})
	for f := range frames + 10 {
		for k, sp := range speakers {
			if f < frames {
				// Arrival jitter up to 17 ms, within the 40 ms buffer.
				arrival := at(f).Add(time.Duration((f*7+k*5)%18) * time.Millisecond)
				h.push(sp.id, sp.ts+uint32(f*FrameSamples), sp.s.packets[f], arrival)
			}
		}
		h.mix(f)
	}
	h.finish()
	st := h.m.Stats()
	// Each speaker's end is concealed for maxConceal frames, nothing else.
	if st.Decoded != 3*frames || st.LateDrops+st.QueueDrops != 0 || st.Concealed != 3*maxConceal {
		t.Errorf("stats %+v: want %d decoded, no drops, %d concealed at the ends", st, 3*frames, 3*maxConceal)
	}

	// Each source's lag in the mixes, from the shared mix.
	delay := mixDelay(t, speakers[0].s, DefaultJitter)
	shared, _ := decodeMix(t, h.out[""])
	lags := make([]int, len(speakers))
	for k, sp := range speakers {
		_, lags[k] = correlationAround(sp.s.pcm, shared, delay, 40)
	}
	tests := []struct {
		mix     string
		present []bool // alice, bob, carol
		voices  int
	}{
		{"", []bool{true, true, true}, 3},
		{"alice", []bool{false, true, true}, 2},
		{"bob", []bool{true, false, true}, 2},
		{"carol", []bool{true, true, false}, 2},
	}
	for _, tt := range tests {
		t.Run("minus="+tt.mix, func(t *testing.T) {
			out := h.out[tt.mix]
			if len(out) != frames+10 {
				t.Fatalf("%d frames of mix %q, want %d", len(out), tt.mix, frames+10)
			}
			if v := out[frames/2].Voices; v != tt.voices {
				t.Errorf("voices = %d, want %d", v, tt.voices)
			}
			// Frame n is mixed at the tick at(n+1), from packets that
			// arrived Jitter before their turn plus up to 17 ms late.
			if lat := at(frames/2 + 1).Sub(out[frames/2].Arrival); lat < DefaultJitter || lat > DefaultJitter+FrameDuration {
				t.Errorf("frame's latency from its earliest packet's arrival %v, want %v to %v", lat, DefaultJitter, DefaultJitter+FrameDuration)
			}
			if l := out[frames/2].Level; l > 40 {
				t.Errorf("level of a mix of speech = -%d dBov, want louder than -40", l)
			}
			pcm, breaks := decodeMix(t, out)
			if breaks != 0 {
				t.Errorf("%d timestamp breaks", breaks)
			}
			for k, sp := range speakers {
				src := sp.s.pcm[:frames*FrameSamples-sp.s.preSkip]
				c, _ := correlationAround(src, pcm, lags[k], 0)
				t.Logf("mix %q vs %s: correlation %+.3f at lag %d (expected about %d)", tt.mix, sp.id, c, lags[k], delay)
				if tt.present[k] && c < 0.3 {
					t.Errorf("%s should be in mix %q: correlation %.3f < 0.3", sp.id, tt.mix, c)
				}
				if !tt.present[k] && math.Abs(c) > 0.05 {
					t.Errorf("%s's own voice leaks into its mix-minus: correlation %.3f > 0.05", sp.id, c)
				}
			}
		})
	}
}

// TestSetMixes: once a policy names the mixes it needs, only those are
// encoded, each leaving out exactly its speakers (here a mix of carol
// alone, for a device that hears alice and bob on slots of their own, and
// the shared mix), and a mix keeps its stream when the set changes.
func TestSetMixes(t *testing.T) {
	speakers := []struct {
		id string
		s  speech
	}{{"alice", speak(t, voiceA)}, {"bob", speak(t, voiceB)}, {"carol", speak(t, voiceC)}}
	const frames = 100
	h := newHarness(t, Config{})
	h.m.SetMixes([]Mix{{Key: "carol-only", Without: []string{"alice", "bob", "nobody"}}, {Key: "all"}})
	for f := range frames {
		if f == frames/2 {
			// Frame f-1's tick again: it mixes nothing new, and its send
			// returns once the previous tick is done, so that the new
			// set applies from frame f on.
			h.mix(f - 1)
			// The shared mix goes; carol-only stays.
			h.m.SetMixes([]Mix{{Key: "carol-only", Without: []string{"bob", "alice"}}})
		}
		for _, sp := range speakers {
			h.push(sp.id, uint32(f*FrameSamples), sp.s.packets[f], at(f))
		}
		h.mix(f)
	}
	h.finish()
	if len(h.out) != 2 || len(h.out["carol-only"]) != frames || len(h.out["all"]) != frames/2 {
		t.Fatalf("mixes encoded: %d carol-only, %d all, %d keys; want %d, %d, 2", len(h.out["carol-only"]), len(h.out["all"]), len(h.out), frames, frames/2)
	}
	if st := h.m.Stats(); st.Encoded != frames+frames/2 {
		t.Errorf("%d encodes, want %d (one per mix set per frame)", st.Encoded, frames+frames/2)
	}
	only := h.out["carol-only"]
	if v := only[frames/2].Voices; v != 1 {
		t.Errorf("carol-only has %d voices, want 1", v)
	}
	pcm, breaks := decodeMix(t, only)
	if breaks != 0 {
		t.Errorf("carol-only: %d timestamp breaks across SetMixes", breaks)
	}
	delay := mixDelay(t, speakers[0].s, DefaultJitter)
	for k, sp := range speakers {
		src := sp.s.pcm[:frames*FrameSamples-sp.s.preSkip]
		c, _ := correlationAround(src, pcm, delay, 40)
		t.Logf("carol-only vs %s: correlation %+.3f", sp.id, c)
		if k == 2 && c < 0.3 {
			t.Errorf("carol missing from her mix: correlation %.3f", c)
		}
		if k != 2 && math.Abs(c) > 0.05 {
			t.Errorf("%s leaks into carol-only: correlation %.3f", sp.id, c)
		}
	}
}

// TestConcealment: a tone from one speaker, with losses and late or
// reordered packets. The mix stays continuous and audible in every frame.
func TestConcealment(t *testing.T) {
	s := makeTone(t, tone{Freq: 440, GainDB: -6, Seconds: 2})
	const frames = 90
	normal := func(i int) time.Time { return at(i).Add(3 * time.Millisecond) }
	tests := []struct {
		name    string
		arrival func(i int) (time.Time, bool) // false: lost
		check   func(st Stats) error
	}{
		{"clean", func(i int) (time.Time, bool) { return normal(i), true }, func(st Stats) error {
			if st.Decoded != frames || st.Recovered+st.LateDrops != 0 {
				return errors.New("want every frame decoded")
			}
			return nil
		}},
		{"one lost", func(i int) (time.Time, bool) { return normal(i), i != 40 }, func(st Stats) error {
			if st.Recovered+st.Concealed != 1 {
				return errors.New("want one frame recovered or concealed (besides the end)")
			}
			return nil
		}},
		{"three lost in a row", func(i int) (time.Time, bool) { return normal(i), i < 40 || i > 42 }, func(st Stats) error {
			if st.Recovered+st.Concealed != 3 {
				return errors.New("want three frames recovered or concealed")
			}
			return nil
		}},
		{"one late", func(i int) (time.Time, bool) {
			if i == 50 {
				return normal(i).Add(100 * time.Millisecond), true
			}
			return normal(i), true
		}, func(st Stats) error {
			if st.LateDrops != 1 || st.Recovered+st.Concealed != 1 {
				return errors.New("want one late drop, concealed")
			}
			return nil
		}},
		{"reordered within the buffer", func(i int) (time.Time, bool) {
			switch i % 10 {
			case 3:
				return normal(i + 1), true
			case 4:
				return normal(i - 1), true
			}
			return normal(i), true
		}, func(st Stats) error {
			if st.Decoded != frames || st.LateDrops != 0 {
				return errors.New("want every frame decoded")
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{})
			// Packets are pushed at the tick before their arrival time.
			type pkt struct {
				i   int
				arr time.Time
			}
			byFrame := map[int][]pkt{}
			for i := range frames {
				if arr, ok := tt.arrival(i); ok {
					f := int(arr.Sub(t0) / FrameDuration)
					byFrame[f] = append(byFrame[f], pkt{i, arr})
				}
			}
			for f := range frames + 10 {
				for _, p := range byFrame[f] {
					h.push("tone", 5000+uint32(p.i*FrameSamples), s.packets[p.i], p.arr)
				}
				h.mix(f)
			}
			h.finish()
			st := h.m.Stats()
			// The tone's end is concealed for maxConceal frames (all PLC:
			// no next packet); leave that out of the checks.
			if st.Concealed < maxConceal {
				t.Fatalf("stats %+v: the end was not concealed", st)
			}
			st.Concealed -= maxConceal
			if err := tt.check(st); err != nil {
				t.Errorf("stats %+v: %v", st, err)
			}
			pcm, breaks := decodeMix(t, h.out[""])
			if breaks != 0 {
				t.Errorf("%d timestamp breaks in the mix", breaks)
			}
			// Every 20 ms of the mix while the tone plays must be audible.
			delay := mixDelay(t, s, DefaultJitter)
			for f := 2; f < frames-2; f++ {
				from := delay + f*FrameSamples
				if r := rms(pcm[from : from+FrameSamples]); r < 0.1 {
					t.Errorf("gap in the mix at frame %d: rms %.3f", f, r)
				}
			}
		})
	}
}

// TestLimiterTwoFullScaleSpeakers: two full-scale tones mixed neither
// clip nor pump: the decoded mix stays under full scale, its level steady.
func TestLimiterTwoFullScaleSpeakers(t *testing.T) {
	a := makeTone(t, tone{Freq: 440, GainDB: 0, Seconds: 2})
	b := makeTone(t, tone{Freq: 554, GainDB: 0, Seconds: 2})
	const frames = 90
	h := newHarness(t, Config{})
	for f := range frames + 5 {
		if f < frames {
			h.push("a", uint32(f*FrameSamples), a.packets[f], at(f))
			h.push("b", 777+uint32(f*FrameSamples), b.packets[f], at(f))
		}
		h.mix(f)
	}
	h.finish()
	pcm, _ := decodeMix(t, h.out[""])
	// The sum the limiter was given, from the sources, aligned to the mix.
	sum := make([]float32, min(len(a.pcm), len(b.pcm)))
	for i := range sum {
		sum[i] = a.pcm[i] + b.pcm[i]
	}
	_, lag := correlationAround(sum, pcm, mixDelay(t, a, DefaultJitter), 40)
	var peak float64
	for _, v := range pcm[lag:] {
		peak = math.Max(peak, math.Abs(float64(v)))
	}
	// Gain over 100 ms windows once the envelope settled (300 ms): pumping
	// is a gain that moves at syllable rate; per 20 ms frame, two passes of
	// Opus at 32 kb/s alone move a two-tone level by up to 0.7 dB (the
	// limiter alone by 0.1 dB, TestLimiter).
	const window = 5 * FrameSamples
	lo, hi := math.Inf(1), math.Inf(-1)
	for at := 15 * FrameSamples; at+window <= (frames-2)*FrameSamples; at += window {
		gain := 20 * math.Log10(rms(pcm[lag+at:lag+at+window])/rms(sum[at:at+window]))
		lo, hi = math.Min(lo, gain), math.Max(hi, gain)
	}
	t.Logf("two full-scale tones: peak %.3f, gain %.2f..%.2f dB", peak, lo, hi)
	if peak >= 1 {
		t.Errorf("the mix clips: peak %.3f", peak)
	}
	if peak < 0.7 {
		t.Errorf("the mix is over-limited: peak %.3f", peak)
	}
	if hi-lo > 1 {
		t.Errorf("the mix pumps: its gain varies by %.2f dB", hi-lo)
	}
}

func TestLimiter(t *testing.T) {
	sine := func(freq, amp float64, n int) []float32 {
		x := make([]float32, n)
		for i := range x {
			x[i] = float32(amp * math.Sin(2*math.Pi*freq*float64(i)/SampleRate))
		}
		return x
	}
	add := func(a, b []float32) []float32 {
		x := make([]float32, len(a))
		for i := range x {
			x[i] = a[i] + b[i]
		}
		return x
	}
	const n = SampleRate // 1 s
	tests := []struct {
		name        string
		in          []float32
		transparent bool
	}{
		{"quiet passes unchanged", sine(440, 0.4, n), true},
		{"one full-scale tone", sine(440, 1, n), false},
		{"two full-scale tones", add(sine(440, 1, n), sine(554, 1, n)), false},
		{"quiet then loud", append(sine(300, 0.1, n/2), add(sine(440, 1, n/2), sine(660, 1, n/2))...), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := append([]float32(nil), tt.in...)
			var l limiter
			for at := 0; at < len(x); at += FrameSamples {
				l.process(x[at : at+FrameSamples])
			}
			var peak float64
			for i, v := range x {
				peak = math.Max(peak, math.Abs(float64(v)))
				if tt.transparent && v != tt.in[i] {
					t.Fatalf("sample %d changed: %v -> %v", i, tt.in[i], v)
				}
			}
			if peak >= limiterCeiling {
				t.Errorf("peak %.4f reaches the ceiling %.2f", peak, limiterCeiling)
			}
			// No pumping: on steady input the gain of each 20 ms over the
			// last 500 ms stays within 0.5 dB.
			lo, hi := math.Inf(1), math.Inf(-1)
			for at := len(x) - n/2; at < len(x); at += FrameSamples {
				g := 20 * math.Log10(rms(x[at:at+FrameSamples])/rms(tt.in[at:at+FrameSamples]))
				lo, hi = math.Min(lo, g), math.Max(hi, g)
			}
			t.Logf("peak %.3f, gain %.2f..%.2f dB", peak, lo, hi)
			if hi-lo > 0.5 {
				t.Errorf("gain varies by %.2f dB on steady input", hi-lo)
			}
		})
	}
}

func TestAudioLevel(t *testing.T) {
	sine := func(amp float64) []float32 {
		x := make([]float32, FrameSamples)
		for i := range x {
			x[i] = float32(amp * math.Sin(2*math.Pi*1000*float64(i)/SampleRate))
		}
		return x
	}
	tests := []struct {
		name string
		in   []float32
		want uint8
	}{
		{"digital silence", make([]float32, FrameSamples), 127},
		{"full-scale sine is -3 dBov", sine(1), 3},
		{"-20 dBFS sine", sine(0.1), 23},
		{"below -127 dBov", sine(1e-7), 127},
	}
	for _, tt := range tests {
		if got := audioLevel(tt.in); got != tt.want {
			t.Errorf("%s: level %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestSpeakersComeAndGo: a speaker who stops leaves after the hangover,
// its mix-minus ends, the shared mix goes on; speakers beyond
// MaxSpeakers are dropped and counted.
func TestSpeakersComeAndGo(t *testing.T) {
	s := makeTone(t, tone{Freq: 440, GainDB: -6, Seconds: 2})
	h := newHarness(t, Config{MaxSpeakers: 2, Hangover: 100 * time.Millisecond})
	const frames = 40
	for f := range frames {
		if f < 20 {
			h.push("a", uint32(f*FrameSamples), s.packets[f], at(f))
		}
		h.push("b", uint32(f*FrameSamples), s.packets[f], at(f))
		if f < 20 {
			// Accepted by the queue, dropped by the mixer: a and b are in.
			h.push("c", uint32(f*FrameSamples), s.packets[f], at(f))
		}
		h.mix(f)
	}
	h.finish()
	st := h.m.Stats()
	tests := []struct {
		name      string
		got, want uint64
	}{
		{"joins", st.Joins, 2},
		{"leaves", st.Leaves, 1},
		{"speaker drops (c)", st.SpeakerDrops, 20},
		{"shared frames", uint64(len(h.out[""])), frames},
		{"b's mix-minus frames", uint64(len(h.out["b"])), frames},
		// a: 20 packets, played in frames 2 to 21, then a 100 ms hangover
		// (5 frames): it leaves at frame 26, so its mix-minus has 0..25.
		{"a's mix-minus frames", uint64(len(h.out["a"])), 26},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
	if v := h.out[""][frames-1].Voices; v != 1 {
		t.Errorf("shared mix holds %d voices after a left, want 1", v)
	}
}

func TestPushErrors(t *testing.T) {
	m, err := New(Config{QueueSize: 2, Output: func(Frame) {}})
	if err != nil {
		t.Fatal(err)
	}
	twenty := []byte{0xf8, 0xff, 0xfe} // CELT FB 20 ms silence
	ten := []byte{0xf0, 0xff, 0xfe}    // CELT FB 10 ms
	tests := []struct {
		name    string
		speaker string
		payload []byte
		want    error
	}{
		{"ok", "a", twenty, nil},
		{"no speaker", "", twenty, ErrNoSpeaker},
		{"empty payload", "a", nil, ErrPacketSize},
		{"oversized payload", "a", make([]byte, maxPacket+1), ErrPacketSize},
		{"10 ms packet", "a", ten, ErrFrameLength},
		{"second fits", "b", twenty, nil},
		{"queue full", "c", twenty, ErrQueueFull},
	}
	for _, tt := range tests {
		if err := m.Push(tt.speaker, 0, tt.payload, t0); !errors.Is(err, tt.want) {
			t.Errorf("%s: Push = %v, want %v", tt.name, err, tt.want)
		}
	}
	if st := m.Stats(); st.Received != 2 || st.QueueDrops != 1 {
		t.Errorf("stats %+v: want 2 received, 1 queue drop", st)
	}
}

func TestNewValidates(t *testing.T) {
	out := func(Frame) {}
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Output: out}, true},
		{"no output", Config{}, false},
		{"jitter too small", Config{Output: out, Jitter: 5 * time.Millisecond}, false},
		{"jitter too large", Config{Output: out, Jitter: time.Second}, false},
		{"hangover too short", Config{Output: out, Hangover: time.Millisecond}, false},
		{"bitrate too low", Config{Output: out, Bitrate: 100}, false},
		{"complexity", Config{Output: out, Complexity: 11}, false},
		{"loss", Config{Output: out, ExpectedLoss: -1}, false},
		{"queue", Config{Output: out, QueueSize: -1}, false},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		if (err == nil) != tt.ok {
			t.Errorf("%s: New = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// TestRunOnce: a second concurrent Run is refused, and Run ends with its
// context (goleak checks no goroutine is left).
func TestRunOnce(t *testing.T) {
	h := newHarness(t, Config{})
	h.mix(0) // Run is active once it took a tick
	if err := h.m.Run(context.Background()); err == nil {
		t.Fatal("second Run accepted")
	}
	h.finish()
	if n := len(h.out[""]); n != 1 {
		t.Errorf("%d frames after one tick, want 1", n)
	}
}
