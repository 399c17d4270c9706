package codec

import (
	"testing"

	"github.com/pion/webrtc/v3"
)

// vp8Key is the start of a VP8 key frame: frame tag (P clear), start code,
// 320x240.
var vp8Key = []byte{0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00}

// vp8Inter is the start of a VP8 interframe (P set).
var vp8Inter = []byte{0x31, 0x0f, 0x00, 0x11, 0x22, 0x33}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

type keyframeTest struct {
	name    string
	mime    string
	payload []byte
	want    bool
}

var keyframeTests = []keyframeTest{
	// VP8, RFC 7741.
	{"vp8 pion descriptor key", "video/VP8", cat([]byte{0x90, 0x80, 0x81, 0x23}, vp8Key), true},
	{"vp8 lower-case mime", "video/vp8", cat([]byte{0x90, 0x80, 0x81, 0x23}, vp8Key), true},
	{"vp8 minimal descriptor key", webrtc.MimeTypeVP8, cat([]byte{0x10}, vp8Key), true},
	{"vp8 7-bit picture id key", webrtc.MimeTypeVP8, cat([]byte{0x90, 0x80, 0x23}, vp8Key), true},
	{"vp8 I L T K key", webrtc.MimeTypeVP8, cat([]byte{0x90, 0xf0, 0x81, 0x23, 0x07, 0x40}, vp8Key), true},
	{"vp8 L only key", webrtc.MimeTypeVP8, cat([]byte{0x90, 0x40, 0x07}, vp8Key), true},
	{"vp8 T only key", webrtc.MimeTypeVP8, cat([]byte{0x90, 0x20, 0x40}, vp8Key), true},
	{"vp8 N bit key", webrtc.MimeTypeVP8, cat([]byte{0x30}, vp8Key), true},
	{"vp8 interframe", webrtc.MimeTypeVP8, cat([]byte{0x90, 0x80, 0x81, 0x23}, vp8Inter), false},
	{"vp8 continuation", webrtc.MimeTypeVP8, cat([]byte{0x80, 0x80, 0x81, 0x23}, vp8Key), false},
	{"vp8 partition 1", webrtc.MimeTypeVP8, cat([]byte{0x11}, vp8Key), false},
	{"vp8 bad start code", webrtc.MimeTypeVP8, []byte{0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2b}, false},
	{"vp8 extensions misread as key", webrtc.MimeTypeVP8, cat([]byte{0x90, 0xc0, 0x23}, vp8Key), false},
	{"vp8 empty", webrtc.MimeTypeVP8, nil, false},
	{"vp8 descriptor only", webrtc.MimeTypeVP8, []byte{0x10}, false},
	{"vp8 X truncated", webrtc.MimeTypeVP8, []byte{0x90}, false},
	{"vp8 I truncated", webrtc.MimeTypeVP8, []byte{0x90, 0x80}, false},
	{"vp8 M truncated", webrtc.MimeTypeVP8, []byte{0x90, 0x80, 0x81}, false},
	{"vp8 start code truncated", webrtc.MimeTypeVP8, []byte{0x90, 0x80, 0x81, 0x23, 0x50, 0x42, 0x00, 0x9d, 0x01}, false},

	// H264, RFC 6184.
	{"h264 SPS", webrtc.MimeTypeH264, []byte{0x67, 0x42, 0xc0, 0x1f}, true},
	{"h264 lower-case mime", "video/h264", []byte{0x67, 0x42, 0xc0, 0x1f}, true},
	{"h264 PPS", webrtc.MimeTypeH264, []byte{0x68, 0xce, 0x3c, 0x80}, false},
	{"h264 IDR first slice", webrtc.MimeTypeH264, []byte{0x65, 0x88, 0x84, 0x00}, true},
	{"h264 IDR second slice", webrtc.MimeTypeH264, []byte{0x65, 0x00, 0x0a, 0x22}, false},
	{"h264 IDR no slice header", webrtc.MimeTypeH264, []byte{0x65}, false},
	{"h264 non-IDR slice", webrtc.MimeTypeH264, []byte{0x41, 0x9a, 0x02}, false},
	{"h264 SEI", webrtc.MimeTypeH264, []byte{0x06, 0x05, 0x01}, false},
	{"h264 AUD", webrtc.MimeTypeH264, []byte{0x09, 0xf0}, false},
	{"h264 forbidden bit", webrtc.MimeTypeH264, []byte{0xe7, 0x42}, false},
	{"h264 STAP-A SPS PPS", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce}, true},
	{"h264 STAP-A AUD SPS", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x09, 0xf0, 0x00, 0x02, 0x67, 0x42}, true},
	{"h264 STAP-A IDR", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x68, 0xce, 0x00, 0x02, 0x65, 0x88}, true},
	{"h264 STAP-A PPS only", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x68, 0xce}, false},
	{"h264 STAP-A second IDR slice", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x65, 0x40}, false},
	{"h264 STAP-A non-IDR slices", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x41, 0x9a, 0x00, 0x02, 0x41, 0x40}, false},
	{"h264 STAP-A overrun", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x05, 0x67, 0x42}, false},
	{"h264 STAP-A trailing byte", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00}, false},
	{"h264 STAP-A zero size", webrtc.MimeTypeH264, []byte{0x78, 0x00, 0x00, 0x00, 0x02, 0x67, 0x42}, false},
	{"h264 STAP-A empty", webrtc.MimeTypeH264, []byte{0x78}, false},
	{"h264 FU-A IDR start", webrtc.MimeTypeH264, []byte{0x7c, 0x85, 0x88, 0x84}, true},
	{"h264 FU-A SPS start", webrtc.MimeTypeH264, []byte{0x7c, 0x87, 0x42, 0xc0}, true},
	{"h264 FU-A IDR second slice start", webrtc.MimeTypeH264, []byte{0x7c, 0x85, 0x40, 0x84}, false},
	{"h264 FU-A IDR middle", webrtc.MimeTypeH264, []byte{0x7c, 0x05, 0x88, 0x84}, false},
	{"h264 FU-A IDR end", webrtc.MimeTypeH264, []byte{0x7c, 0x45, 0x88, 0x84}, false},
	{"h264 FU-A non-IDR start", webrtc.MimeTypeH264, []byte{0x5c, 0x81, 0x9a, 0x02}, false},
	{"h264 FU-A truncated", webrtc.MimeTypeH264, []byte{0x7c}, false},
	{"h264 FU-A IDR start truncated", webrtc.MimeTypeH264, []byte{0x7c, 0x85}, false},
	{"h264 FU-B", webrtc.MimeTypeH264, []byte{0x7d, 0x85, 0x00, 0x01, 0x88}, false},
	{"h264 STAP-B", webrtc.MimeTypeH264, []byte{0x79, 0x00, 0x01, 0x00, 0x02, 0x67, 0x42}, false},
	{"h264 empty", webrtc.MimeTypeH264, nil, false},

	// VP9, RFC 9628.
	{"vp9 pion non-flexible key", webrtc.MimeTypeVP9, []byte{0x8b, 0x81, 0x23, 0x18, 0x01, 0x40, 0x00, 0xf0, 0x01, 0x14, 0x01, 0x82, 0x49}, true},
	{"vp9 lower-case mime", "video/vp9", []byte{0x8b, 0x81, 0x23, 0x18, 0x01, 0x40, 0x00, 0xf0, 0x01, 0x14, 0x01, 0x82, 0x49}, true},
	{"vp9 pion interframe", webrtc.MimeTypeVP9, []byte{0xcd, 0x81, 0x24, 0x86, 0x00}, false},
	{"vp9 key continuation", webrtc.MimeTypeVP9, []byte{0x81, 0x81, 0x23, 0x00}, false},
	{"vp9 key last packet", webrtc.MimeTypeVP9, []byte{0x85, 0x81, 0x23, 0x00}, false},
	{"vp9 minimal key", webrtc.MimeTypeVP9, []byte{0x08, 0x82}, true},
	{"vp9 7-bit picture id key", webrtc.MimeTypeVP9, []byte{0x88, 0x23, 0x82}, true},
	{"vp9 non-flexible L key", webrtc.MimeTypeVP9, []byte{0xa8, 0x23, 0x00, 0x05, 0x82}, true},
	{"vp9 non-flexible L spatial layer 1", webrtc.MimeTypeVP9, []byte{0xa8, 0x23, 0x02, 0x05, 0x82}, false},
	{"vp9 non-flexible L no TL0PICIDX", webrtc.MimeTypeVP9, []byte{0xa8, 0x23, 0x00, 0x05}, false},
	{"vp9 flexible key", webrtc.MimeTypeVP9, []byte{0x98, 0x81, 0x23, 0x82}, true},
	{"vp9 flexible L key", webrtc.MimeTypeVP9, []byte{0xb8, 0x81, 0x23, 0x00, 0x82}, true},
	{"vp9 flexible L temporal layer 1 key", webrtc.MimeTypeVP9, []byte{0xb8, 0x81, 0x23, 0x20, 0x82}, true},
	{"vp9 flexible L spatial layer 2", webrtc.MimeTypeVP9, []byte{0xb8, 0x81, 0x23, 0x04, 0x82}, false},
	{"vp9 flexible inter", webrtc.MimeTypeVP9, []byte{0xd8, 0x81, 0x23, 0x02, 0x86}, false},
	{"vp9 flexible without picture id", webrtc.MimeTypeVP9, []byte{0x18, 0x82}, false},
	{"vp9 flexible L truncated", webrtc.MimeTypeVP9, []byte{0xb8, 0x81, 0x23}, false},
	{"vp9 picture id truncated", webrtc.MimeTypeVP9, []byte{0x88}, false},
	{"vp9 M picture id truncated", webrtc.MimeTypeVP9, []byte{0x88, 0x81}, false},
	{"vp9 descriptor only", webrtc.MimeTypeVP9, []byte{0x8b, 0x81, 0x23}, false},
	{"vp9 empty", webrtc.MimeTypeVP9, nil, false},

	// AV1, AV1 RTP specification.
	{"av1 new sequence", webrtc.MimeTypeAV1, []byte{0x18, 0x0a, 0x0b, 0x00}, true},
	{"av1 lower-case mime", "video/av1", []byte{0x18, 0x0a, 0x0b, 0x00}, true},
	{"av1 new sequence, two OBUs", webrtc.MimeTypeAV1, []byte{0x28, 0x02, 0x0a, 0x00, 0x32, 0x10}, true},
	{"av1 ordinary", webrtc.MimeTypeAV1, []byte{0x10, 0x32, 0x10}, false},
	{"av1 continuation", webrtc.MimeTypeAV1, []byte{0x90, 0x32, 0x10}, false},
	{"av1 N with Z", webrtc.MimeTypeAV1, []byte{0x98, 0x32, 0x10}, false},
	{"av1 header only", webrtc.MimeTypeAV1, []byte{0x18}, false},
	{"av1 empty", webrtc.MimeTypeAV1, nil, false},

	// Codecs without keyframes to find.
	{"opus", webrtc.MimeTypeOpus, []byte{0x78, 0x00, 0x02, 0x67, 0x42}, false},
	{"h265", webrtc.MimeTypeH265, []byte{0x40, 0x01, 0x0c}, false},
	{"empty mime", "", []byte{0x67, 0x42}, false},
}

func TestKeyframe(t *testing.T) {
	for _, tt := range keyframeTests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Keyframe(tt.mime, tt.payload); got != tt.want {
				t.Fatalf("Keyframe(%q, % x) = %v, want %v", tt.mime, tt.payload, got, tt.want)
			}
		})
	}
}

// TestKeyframeTruncated runs Keyframe on every proper prefix of every
// table payload: truncation must never panic.
func TestKeyframeTruncated(t *testing.T) {
	for _, tt := range keyframeTests {
		for n := range len(tt.payload) {
			Keyframe(tt.mime, tt.payload[:n])
		}
	}
}

func TestKeyframeAllocs(t *testing.T) {
	for _, tt := range keyframeTests {
		if n := testing.AllocsPerRun(100, func() { Keyframe(tt.mime, tt.payload) }); n != 0 {
			t.Errorf("%s: %v allocations, want 0", tt.name, n)
		}
	}
}

func BenchmarkKeyframe(b *testing.B) {
	for _, tt := range keyframeTests[:4] {
		b.Run(tt.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				Keyframe(tt.mime, tt.payload)
			}
		})
	}
}

func FuzzKeyframe(f *testing.F) {
	for _, tt := range keyframeTests {
		f.Add(tt.mime, tt.payload)
	}
	f.Fuzz(func(t *testing.T, mime string, payload []byte) {
		Keyframe(mime, payload)
	})
}
