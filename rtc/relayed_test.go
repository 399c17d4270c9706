package rtc

import (
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc/codec"
)

// TestRelayedUpTrackKeyframe: a relayed video track's keyframe requests
// reach its function, throttled like a WebRTC track's; an audio track's
// never do.
func TestRelayedUpTrackKeyframe(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kind  webrtc.RTPCodecType
		cc    webrtc.RTPCodecCapability
		calls int
	}{
		{"video", webrtc.RTPCodecTypeVideo, codec.VP8.RTPCodecCapability, 1},
		{"audio", webrtc.RTPCodecTypeAudio, codec.Opus.RTPCodecCapability, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			up := NewRelayedUpTrack(claim.Claim{UserID: "u", ClientID: "c"}, 5, tc.kind, tc.cc, 0, func() { calls++ })
			first := up.RequestKeyframe()
			second := up.RequestKeyframe() // within the interval
			if first != (tc.calls == 1) || second || calls != tc.calls {
				t.Fatalf("requests %v %v, %d calls; want %v false, %d", first, second, calls, tc.calls == 1, tc.calls)
			}
			up.SetKeyframeInterval(0) // no throttle: the next request goes out
			if third := up.RequestKeyframe(); third != (tc.calls == 1) || calls != 2*tc.calls {
				t.Fatalf("without the throttle: request %v, %d calls; want %v, %d", third, calls, tc.calls == 1, 2*tc.calls)
			}
		})
	}
}
