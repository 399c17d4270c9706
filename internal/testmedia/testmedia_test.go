package testmedia_test

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
)

func TestMain(m *testing.M) {
	defer testmedia.Cleanup()
	m.Run()
}

// The fixtures are 3 s at 30 frames per second, a keyframe every 30.
var (
	wantFrames    = 90
	wantKeyframes = []int{0, 30, 60}
)

// keyframes returns the indices of the keyframes of frames.
func keyframes(frames []testmedia.Frame) []int {
	var keys []int
	for i, f := range frames {
		if f.Keyframe {
			keys = append(keys, i)
		}
	}
	return keys
}

func TestFrames(t *testing.T) {
	tests := []struct {
		name string
		path func(testing.TB) string
	}{
		{"VP8", testmedia.VP8}, {"H264", testmedia.H264}, {"VP9", testmedia.VP9}, {"AV1", testmedia.AV1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := testmedia.Frames(t, tt.path(t))
			if len(frames) != wantFrames {
				t.Errorf("%d frames, want %d", len(frames), wantFrames)
			}
			if keys := keyframes(frames); !slices.Equal(keys, wantKeyframes) {
				t.Errorf("keyframes %v, want %v", keys, wantKeyframes)
			}
			for i, f := range frames {
				if len(f.Data) == 0 || f.Duration != time.Second/30 {
					t.Errorf("frame %d: %d bytes, duration %v", i, len(f.Data), f.Duration)
				}
			}
		})
	}
}

// TestH264AccessUnits checks the grouping of NAL units into access units:
// one picture each (x264's zero latency tuning codes a picture as one
// slice per thread), SPS and PPS leading every IDR picture.
func TestH264AccessUnits(t *testing.T) {
	for i, f := range testmedia.Frames(t, testmedia.H264(t)) {
		var types []byte
		pictures, slices := 0, 0
		for nal := range bytes.SplitSeq(f.Data, []byte{0, 0, 0, 1}) {
			if len(nal) < 2 {
				continue
			}
			typ := nal[0] & 0x1f
			types = append(types, typ)
			if typ == 1 || typ == 5 {
				slices++
				if nal[1]&0x80 != 0 {
					pictures++
				}
			}
		}
		if !bytes.HasPrefix(f.Data, []byte{0, 0, 0, 1}) || pictures != 1 {
			t.Fatalf("frame %d: NAL unit types %v, %d pictures", i, types, pictures)
		}
		if f.Keyframe && !bytes.HasPrefix(types, []byte{7, 8, 5}) {
			t.Fatalf("keyframe %d: NAL unit types %v, want SPS, PPS, IDR first", i, types)
		}
		if i == 0 {
			t.Logf("%d slices per picture", slices)
		}
	}
}

func TestPacketize(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	seq := uint16(1)
	var ts uint32
	for i, pkts := range testmedia.Packetize(frames, &codecs.VP8Payloader{EnablePictureID: true}, 96) {
		if len(pkts) == 0 {
			t.Fatalf("frame %d: no packets", i)
		}
		if i == 0 {
			ts = pkts[0].Timestamp
		}
		for j, p := range pkts {
			b, err := p.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if p.SequenceNumber != seq || p.Timestamp != ts || p.PayloadType != 96 ||
				p.Marker != (j == len(pkts)-1) || len(b) > testmedia.MTU {
				t.Fatalf("frame %d packet %d: %v, %d bytes; want sequence number %d, timestamp %d",
					i, j, p.Header, len(b), seq, ts)
			}
			seq++
		}
		ts += 3000
	}
}

// decoders are the fixtures that can be decoded back from RTP.
var decoders = []struct {
	name      string
	path      func(testing.TB) string
	payloader func() rtp.Payloader
	decode    func(testing.TB, []*rtp.Packet) (int, []string)
}{
	{"VP8", testmedia.VP8, func() rtp.Payloader { return &codecs.VP8Payloader{EnablePictureID: true} }, testmedia.DecodeVP8},
	{"H264", testmedia.H264, func() rtp.Payloader { return &codecs.H264Payloader{} }, testmedia.DecodeH264},
}

// TestRoundTrip decodes every packet of a fixture: every frame comes back.
func TestRoundTrip(t *testing.T) {
	for _, tt := range decoders {
		t.Run(tt.name, func(t *testing.T) {
			frames := testmedia.Frames(t, tt.path(t))
			pkts := slices.Concat(testmedia.Packetize(frames, tt.payloader(), 96)...)
			n, errs := tt.decode(t, pkts)
			if n != len(frames) || len(errs) > 0 {
				t.Fatalf("%d of %d frames decoded, errors %q", n, len(frames), errs)
			}
		})
	}
}

// TestJoinMidStream decodes a fixture from frame 10 on, as a receiver that
// joins late sees it: decoding starts at the next keyframe, frame 30.
func TestJoinMidStream(t *testing.T) {
	for _, tt := range decoders {
		t.Run(tt.name, func(t *testing.T) {
			frames := testmedia.Frames(t, tt.path(t))
			pkts := slices.Concat(testmedia.Packetize(frames, tt.payloader(), 96)[10:]...)
			if n, errs := tt.decode(t, pkts); n != len(frames)-30 || len(errs) > 0 {
				t.Fatalf("%d frames decoded, want %d; errors %q", n, len(frames)-30, errs)
			}
		})
	}
}

// loseKeyframeMiddle drops every packet of keyframe key but its first and
// last, and, if renumber, renumbers the packets so that the sequence
// numbers hide the loss, as a faulty forwarder might.
func loseKeyframeMiddle(t *testing.T, frames [][]*rtp.Packet, key int, renumber bool) []*rtp.Packet {
	t.Helper()
	k := frames[key]
	if len(k) < 3 {
		t.Fatalf("keyframe %d has %d packets, no middle to lose", key, len(k))
	}
	frames[key] = []*rtp.Packet{k[0], k[len(k)-1]}
	pkts := slices.Concat(frames...)
	if renumber {
		for i, p := range pkts {
			p.SequenceNumber = uint16(i + 1)
		}
	}
	return pkts
}

// nonRTP returns the errors that do not come from the sequence check.
func nonRTP(errs []string) []string {
	return slices.DeleteFunc(slices.Clone(errs), func(e string) bool { return strings.HasPrefix(e, "rtp: ") })
}

func TestDecodeDetectsLoss(t *testing.T) {
	t.Run("VP8 first keyframe, renumbered", func(t *testing.T) {
		// Only the decoder can tell: libvpx rejects the damaged keyframe
		// and the frames up to the next one.
		frames := testmedia.Frames(t, testmedia.VP8(t))
		pkts := loseKeyframeMiddle(t, testmedia.Packetize(frames, &codecs.VP8Payloader{EnablePictureID: true}, 96), 0, true)
		n, errs := testmedia.DecodeVP8(t, pkts)
		if n != len(frames)-30 || len(nonRTP(errs)) == 0 || len(nonRTP(errs)) != len(errs) {
			t.Fatalf("%d frames decoded, want %d; errors %q, want decoder errors only", n, len(frames)-30, errs)
		}
		t.Logf("%d frames decoded; first error %q", n, errs[0])
	})
	t.Run("VP8 later keyframe", func(t *testing.T) {
		// libvpx conceals damage after a good keyframe: only the
		// sequence check sees the loss.
		frames := testmedia.Frames(t, testmedia.VP8(t))
		pkts := loseKeyframeMiddle(t, testmedia.Packetize(frames, &codecs.VP8Payloader{EnablePictureID: true}, 96), 30, false)
		n, errs := testmedia.DecodeVP8(t, pkts)
		if len(errs) != 1 || !strings.HasPrefix(errs[0], "rtp: sequence number ") {
			t.Fatalf("%d frames decoded; errors %q, want one sequence break", n, errs)
		}
		t.Logf("%d frames decoded; errors %q", n, errs)
	})
	t.Run("H264 later keyframe, renumbered", func(t *testing.T) {
		frames := testmedia.Frames(t, testmedia.H264(t))
		pkts := loseKeyframeMiddle(t, testmedia.Packetize(frames, &codecs.H264Payloader{}, 96), 30, true)
		n, errs := testmedia.DecodeH264(t, pkts)
		if n >= len(frames) || len(nonRTP(errs)) == 0 {
			t.Fatalf("%d of %d frames decoded; errors %q, want fewer frames and decoder errors", n, len(frames), errs)
		}
		t.Logf("%d frames decoded; first error %q", n, errs[0])
	})
}
