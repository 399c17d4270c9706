// Package codec holds what the router knows about the codecs it forwards:
// the RTP codec parameters it negotiates with pion, and the per-packet
// inspection (keyframe detection) that forwarding decisions need.
package codec

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pion/webrtc/v3"
)

// Opus is the audio codec the router negotiates: Opus, 48 kHz, as WebRTC
// signals it (2 channels), with NACK feedback so that lost packets can be
// asked for again in both directions.
var Opus = webrtc.RTPCodecParameters{
	RTPCodecCapability: webrtc.RTPCodecCapability{
		MimeType:     webrtc.MimeTypeOpus,
		ClockRate:    48000,
		Channels:     2,
		SDPFmtpLine:  "minptime=10;useinbandfec=1",
		RTCPFeedback: []webrtc.RTCPFeedback{{Type: "nack"}},
	},
	PayloadType: 111,
}

// VP8 is the VP8 video codec (RFC 7741).
var VP8 = videoParams(webrtc.MimeTypeVP8, "", 96)

// H264 is H.264 constrained baseline, level 3.1, in non-interleaved
// packetization mode (RFC 6184 packetization-mode=1: single NAL units,
// STAP-A and FU-A), the profile every WebRTC browser supports.
var H264 = videoParams(webrtc.MimeTypeH264,
	"level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 102)

// VP9 is VP9 profile 0 (8-bit 4:2:0).
var VP9 = videoParams(webrtc.MimeTypeVP9, "profile-id=0", 98)

// AV1 is AV1 with the defaults of the AV1 RTP specification for absent
// fmtp parameters: main profile, level 3.1 (level-idx 5), main tier.
var AV1 = videoParams(webrtc.MimeTypeAV1, "", 45)

// videoCodecs lists the video codecs in order of preference.
var videoCodecs = []*webrtc.RTPCodecParameters{&VP8, &H264, &VP9, &AV1}

// videoParams returns the parameters of a video codec with the feedback every
// video codec gets: NACK (lost packets), PLI and FIR (keyframe requests),
// and both bandwidth estimation schemes. There is deliberately no RTX
// codec: the router answers NACKs by retransmitting the original packet on
// the media SSRC.
func videoParams(mime, fmtp string, pt webrtc.PayloadType) webrtc.RTPCodecParameters {
	return webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType:    mime,
			ClockRate:   90000,
			SDPFmtpLine: fmtp,
			RTCPFeedback: []webrtc.RTCPFeedback{
				{Type: webrtc.TypeRTCPFBNACK},
				{Type: webrtc.TypeRTCPFBNACK, Parameter: "pli"},
				{Type: webrtc.TypeRTCPFBCCM, Parameter: "fir"},
				{Type: webrtc.TypeRTCPFBGoogREMB},
				{Type: webrtc.TypeRTCPFBTransportCC},
			},
		},
		PayloadType: pt,
	}
}

// Register registers Opus on m and, if video is true, the video codecs
// VP8, H264, VP9 and AV1 in that order of preference. It registers no
// header extensions: that is the caller's business.
func Register(m *webrtc.MediaEngine, video bool) error {
	if err := register(m, Opus, webrtc.RTPCodecTypeAudio); err != nil {
		return err
	}
	if !video {
		return nil
	}
	for _, c := range videoCodecs {
		if err := register(m, *c, webrtc.RTPCodecTypeVideo); err != nil {
			return err
		}
	}
	return nil
}

// register registers c with a feedback slice of its own, so that the
// MediaEngine (whose RegisterFeedback appends to it) never shares the
// backing array of the package's variables.
func register(m *webrtc.MediaEngine, c webrtc.RTPCodecParameters, typ webrtc.RTPCodecType) error {
	c.RTCPFeedback = slices.Clone(c.RTCPFeedback)
	if err := m.RegisterCodec(c, typ); err != nil {
		return fmt.Errorf("register codec %s (payload type %d): %w", c.MimeType, c.PayloadType, err)
	}
	return nil
}

// IsVideo reports whether mime names a video media type ("video/...",
// compared case-insensitively), whether or not the router supports it.
func IsVideo(mime string) bool {
	const prefix = "video/"
	return len(mime) > len(prefix) && strings.EqualFold(mime[:len(prefix)], prefix)
}

// Supported reports whether mime is the MIME type of a codec the router
// negotiates: Opus, VP8, H264, VP9 or AV1. MIME types compare
// case-insensitively, as RFC 6838 says they do ("video/vp8" is VP8).
func Supported(mime string) bool {
	if strings.EqualFold(mime, Opus.MimeType) {
		return true
	}
	for _, c := range videoCodecs {
		if strings.EqualFold(mime, c.MimeType) {
			return true
		}
	}
	return false
}
