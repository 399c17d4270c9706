//go:build opus

package mix

import (
	"testing"

	"github.com/beepvoice/router/mix/internal/libopus"
)

// The codec comparison: gopus (the pure-Go Opus the mixer uses) against
// libopus, the reference, on real speech. Run with libopus-dev installed:
//
//	go test -tags opus -run TestCodec -bench BenchmarkCodec -v ./mix
//
// It prints the figures docs/performance.md quotes ("Mixer codec") and
// fails if gopus falls below the floors that made it the choice.

// decodeAll decodes packets with decode (lost[i]: conceal packet i).
func decodeAll(t testing.TB, packets [][]byte, lost func(int) bool, decode func(pkt []byte, pcm []float32) (int, error)) []float32 {
	t.Helper()
	out := make([]float32, 0, len(packets)*FrameSamples)
	pcm := make([]float32, FrameSamples)
	for i, p := range packets {
		if lost != nil && lost(i) {
			p = nil
		}
		n, err := decode(p, pcm)
		if err != nil {
			t.Fatalf("decode packet %d: %v", i, err)
		}
		out = append(out, pcm[:n]...)
	}
	return out
}

// encodeAll encodes pcm in 20 ms frames with encode.
func encodeAll(t testing.TB, pcm []float32, encode func(pcm []float32, out []byte) (int, error)) [][]byte {
	t.Helper()
	var packets [][]byte
	buf := make([]byte, maxPacket)
	frame := make([]float32, FrameSamples)
	for at := 0; at < len(pcm); at += FrameSamples {
		clear(frame)
		copy(frame, pcm[at:])
		n, err := encode(frame, buf)
		if err != nil {
			t.Fatalf("encode frame %d: %v", at/FrameSamples, err)
		}
		packets = append(packets, append([]byte(nil), buf[:n]...))
	}
	return packets
}

func libopusDecode(t testing.TB, packets [][]byte, lost func(int) bool) []float32 {
	t.Helper()
	d, err := libopus.NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	return decodeAll(t, packets, lost, d.Decode)
}

func gopusDecode(t testing.TB, packets [][]byte, lost func(int) bool) []float32 {
	t.Helper()
	d, err := newDecoder()
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, packets, lost, d.Decode)
}

// TestCodecAgainstLibopus measures gopus's decoder against libopus's on
// the same packets, and both encoders at 32 kb/s through libopus's decoder
// against the source.
func TestCodecAgainstLibopus(t *testing.T) {
	t.Logf("libopus %s", libopus.Version())
	for _, v := range []voice{voiceA, voiceB, voiceC} {
		s := speak(t, v)
		every10 := func(i int) bool { return i%10 == 5 }

		// Decode accuracy: same packets, both decoders.
		ref := libopusDecode(t, s.packets, nil)
		got := gopusDecode(t, s.packets, nil)
		decSNR := snr(ref, got)
		refLoss := libopusDecode(t, s.packets, every10)
		gotLoss := gopusDecode(t, s.packets, every10)
		plcSNR := snr(refLoss, gotLoss)

		// Encode quality: encode at 32 kb/s, decode with libopus, align.
		genc, err := newEncoder(32000, 10)
		if err != nil {
			t.Fatal(err)
		}
		lenc, err := libopus.NewEncoder(32000, 10)
		if err != nil {
			t.Fatal(err)
		}
		gPackets := encodeAll(t, s.pcm, genc.Encode)
		lPackets := encodeAll(t, s.pcm, lenc.Encode)
		lenc.Close()
		gOut := libopusDecode(t, gPackets, nil)
		lOut := libopusDecode(t, lPackets, nil)
		gCorr, gLag := correlation(s.pcm, gOut, 1000)
		lCorr, lLag := correlation(s.pcm, lOut, 1000)
		gAligned, lAligned := shift(gOut, gLag), shift(lOut, lLag)
		var gBytes, lBytes int
		for i := range gPackets {
			gBytes += len(gPackets[i])
			lBytes += len(lPackets[i])
		}
		secs := float64(len(s.pcm)) / SampleRate
		t.Logf("%s p%d (%.1f s): decode gopus vs libopus SNR %.1f dB (with 10%% loss, PLC: %.1f dB)",
			v.Name, v.Pitch, secs, decSNR, plcSNR)
		t.Logf("  encode 32 kb/s  gopus: %.1f kb/s, lag %d, corr %.3f, SNR %.1f dB, segSNR %.1f dB, LSD %.2f dB",
			float64(gBytes*8)/secs/1000, gLag, gCorr, snr(s.pcm, gAligned), segSNR(s.pcm, gAligned), lsd(s.pcm, gAligned))
		t.Logf("  encode 32 kb/s libopus: %.1f kb/s, lag %d, corr %.3f, SNR %.1f dB, segSNR %.1f dB, LSD %.2f dB",
			float64(lBytes*8)/secs/1000, lLag, lCorr, snr(s.pcm, lAligned), segSNR(s.pcm, lAligned), lsd(s.pcm, lAligned))
		if err := genc.SetComplexity(DefaultComplexity); err != nil {
			t.Fatal(err)
		}
		genc.Reset()
		cOut := libopusDecode(t, encodeAll(t, s.pcm, genc.Encode), nil)
		cCorr, cLag := correlation(s.pcm, cOut, 1000)
		cAligned := shift(cOut, cLag)
		t.Logf("  encode 32 kb/s   gopus complexity %d: corr %.3f, SNR %.1f dB, segSNR %.1f dB, LSD %.2f dB",
			DefaultComplexity, cCorr, snr(s.pcm, cAligned), segSNR(s.pcm, cAligned), lsd(s.pcm, cAligned))

		if decSNR < 40 {
			t.Errorf("%s: gopus decodes %.1f dB from libopus, want ≥ 40", v.Name, decSNR)
		}
		if gCorr < 0.9 || lsd(s.pcm, gAligned) > lsd(s.pcm, lAligned)+1.5 {
			t.Errorf("%s: gopus encoder: correlation %.3f, LSD %.2f vs libopus %.2f", v.Name, gCorr, lsd(s.pcm, gAligned), lsd(s.pcm, lAligned))
		}
	}
}

// BenchmarkCodec is the CPU of one 20 ms frame of speech, decode and
// encode (32 kb/s, FEC on), for each codec.
func BenchmarkCodec(b *testing.B) {
	s := speak(b, voiceA)
	frames := make([][]float32, 0, len(s.pcm)/FrameSamples)
	for at := 0; at+FrameSamples <= len(s.pcm); at += FrameSamples {
		frames = append(frames, s.pcm[at:at+FrameSamples])
	}
	pcm := make([]float32, FrameSamples)
	out := make([]byte, maxPacket)
	b.Run("decode/gopus", func(b *testing.B) {
		d, err := newDecoder()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := d.Decode(s.packets[i%len(s.packets)], pcm); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode/libopus", func(b *testing.B) {
		d, err := libopus.NewDecoder()
		if err != nil {
			b.Fatal(err)
		}
		defer d.Close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := d.Decode(s.packets[i%len(s.packets)], pcm); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode/gopus", func(b *testing.B) {
		e, err := newEncoder(32000, 10)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := e.Encode(frames[i%len(frames)], out); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode/libopus", func(b *testing.B) {
		e, err := libopus.NewEncoder(32000, 10)
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := e.Encode(frames[i%len(frames)], out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
