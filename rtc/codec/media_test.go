package codec_test

import (
	"testing"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/rtc/codec"
	"github.com/pion/rtp"
	"github.com/pion/rtp/codecs"
	"github.com/pion/webrtc/v3"
)

func TestMain(m *testing.M) {
	defer testmedia.Cleanup()
	m.Run()
}

// h264IDRStart returns the index of the first packet of pkts, the packets
// of one H.264 access unit, that carries an IDR slice as a single NAL unit
// or starts one as an FU-A, or -1.
func h264IDRStart(pkts []*rtp.Packet) int {
	for i, p := range pkts {
		b := p.Payload
		switch {
		case b[0]&0x1f == 5:
			return i
		case b[0]&0x1f == 28 && b[1]&0x80 != 0 && b[1]&0x1f == 5:
			return i
		}
	}
	return -1
}

// TestKeyframeRealPayloads packetizes real encoded media with pion's
// payloaders and checks Keyframe on every packet: true exactly on the
// first packet of every keyframe. H.264 keyframes come as a STAP-A with
// SPS and PPS (or, without STAP-A, an SPS packet and a PPS packet) and
// then the IDR slices: the packet that starts the first IDR slice reports
// true too, those of later slices of the picture do not.
func TestKeyframeRealPayloads(t *testing.T) {
	tests := []struct {
		name      string
		mime      string
		path      func(testing.TB) string
		payloader rtp.Payloader
	}{
		{"VP8", webrtc.MimeTypeVP8, testmedia.VP8, &codecs.VP8Payloader{EnablePictureID: true}},
		{"VP8 without picture ID", webrtc.MimeTypeVP8, testmedia.VP8, &codecs.VP8Payloader{}},
		{"H264", webrtc.MimeTypeH264, testmedia.H264, &codecs.H264Payloader{}},
		{"H264 without STAP-A", webrtc.MimeTypeH264, testmedia.H264, &codecs.H264Payloader{DisableStapA: true}},
		{"VP9", webrtc.MimeTypeVP9, testmedia.VP9, &codecs.VP9Payloader{}},
		{"AV1", webrtc.MimeTypeAV1, testmedia.AV1, &codecs.AV1Payloader{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			frames := testmedia.Frames(t, tt.path(t))
			keys, packets := 0, 0
			for i, pkts := range testmedia.Packetize(frames, tt.payloader, 96) {
				if len(pkts) == 0 {
					t.Fatalf("frame %d: no packets", i)
				}
				idr := -1
				if tt.mime == webrtc.MimeTypeH264 && frames[i].Keyframe {
					idr = h264IDRStart(pkts)
				}
				for j, p := range pkts {
					want := frames[i].Keyframe && (j == 0 || j == idr)
					if got := codec.Keyframe(tt.mime, p.Payload); got != want {
						t.Errorf("frame %d (keyframe %v) packet %d of %d: Keyframe = %v, want %v; payload % x...",
							i, frames[i].Keyframe, j, len(pkts), got, want, p.Payload[:min(len(p.Payload), 8)])
					}
					if want {
						keys++
					}
					packets++
				}
			}
			t.Logf("%d frames, %d packets, %d keyframe starts", len(frames), packets, keys)
		})
	}
}
