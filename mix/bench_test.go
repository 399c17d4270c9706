package mix

import "testing"

// benchMixer is a Mixer driven directly (no goroutine), fed by the
// speech fixtures of n speakers.
func benchMixer(b *testing.B, n int, fec bool) (m *Mixer, feed func(f int)) {
	b.Helper()
	voices := []voice{voiceA, voiceB, voiceC}
	m, err := New(Config{Start: t0, Output: func(Frame) {}, QueueSize: 16})
	if err != nil {
		b.Fatal(err)
	}
	m.shared.enc.SetFEC(fec)
	sources := make([]speech, n)
	ids := []string{"a", "b", "c"}
	for k := range n {
		sources[k] = speak(b, voices[k])
	}
	feed = func(f int) {
		for k, s := range sources {
			if err := m.Push(ids[k], uint32(f*FrameSamples), s.packets[f%len(s.packets)], at(f)); err != nil {
				b.Fatal(err)
			}
		}
		m.tick(at(f + 1))
	}
	// Warm up: every speaker joined, every buffer sized.
	for f := range 10 {
		feed(f)
	}
	for _, s := range m.speakers {
		s.out.enc.SetFEC(fec)
	}
	return m, feed
}

// BenchmarkMixFrame is one whole 20 ms frame of a conversation with three
// speakers: queue, jitter buffers, 3 decodes, 4 distinct mixes (shared and
// three mix-minus) limited and encoded. allocs/op with fec=false shows the
// engine's own steady state; with fec=true gopus's FEC encoder allocates.
func BenchmarkMixFrame(b *testing.B) {
	for _, fec := range []bool{true, false} {
		name := "fec=on"
		if !fec {
			name = "fec=off"
		}
		b.Run(name, func(b *testing.B) {
			_, feed := benchMixer(b, 3, fec)
			b.ReportAllocs()
			f := 10
			for b.Loop() {
				feed(f)
				f++
			}
			perFrame := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(perFrame*50/1e6, "ms-CPU/s")
		})
	}
}

// BenchmarkDecodeContributor is the decode side alone: CPU per
// contributor per second of audio (jitter buffer and decode).
func BenchmarkDecodeContributor(b *testing.B) {
	m, _ := benchMixer(b, 1, true)
	s := speak(b, voiceA)
	sp := m.speakers[0]
	b.ReportAllocs()
	f := int64(10)
	for b.Loop() {
		p := s.packets[f%int64(len(s.packets))]
		if err := m.Push("a", uint32(f*FrameSamples), p, at(int(f))); err != nil {
			b.Fatal(err)
		}
		m.drain()
		// Play the packet's frame now, as if it were due.
		m.next = floorDiv(int64(uint32(f*FrameSamples))+sp.offset, FrameSamples)
		m.decode(sp, m.next)
		f++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)*50/1e6, "ms-CPU/contributor-s")
}

// BenchmarkEncodeMix is the encode side alone: CPU per distinct mix per
// second of audio (limiter, level and a 32 kb/s FEC encode).
func BenchmarkEncodeMix(b *testing.B) {
	s := speak(b, voiceA)
	m, err := New(Config{Start: t0, Output: func(Frame) {}})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	at := 0
	for b.Loop() {
		copy(m.pcm[:], s.pcm[at:at+FrameSamples])
		m.encode(&m.shared, "", "", 0, 1, -1)
		if at += FrameSamples; at+FrameSamples > len(s.pcm) {
			at = 0
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)*50/1e6, "ms-CPU/mix-s")
}
