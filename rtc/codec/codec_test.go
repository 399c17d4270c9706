package codec

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pion/ice/v2"
	"github.com/pion/webrtc/v3"
)

func TestOpusUnchanged(t *testing.T) {
	// The parameters the router negotiated before video existed.
	want := webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{
			MimeType:     webrtc.MimeTypeOpus,
			ClockRate:    48000,
			Channels:     2,
			SDPFmtpLine:  "minptime=10;useinbandfec=1",
			RTCPFeedback: []webrtc.RTCPFeedback{{Type: "nack"}},
		},
		PayloadType: 111,
	}
	if !reflect.DeepEqual(Opus, want) {
		t.Fatalf("Opus = %+v, want %+v", Opus, want)
	}
}

func TestVideoCodecs(t *testing.T) {
	feedback := []webrtc.RTCPFeedback{
		{Type: "nack"}, {Type: "nack", Parameter: "pli"}, {Type: "ccm", Parameter: "fir"},
		{Type: "goog-remb"}, {Type: "transport-cc"},
	}
	tests := []struct {
		name string
		c    webrtc.RTPCodecParameters
		mime string
		fmtp string
		pt   webrtc.PayloadType
	}{
		{"VP8", VP8, "video/VP8", "", 96},
		{"H264", H264, "video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 102},
		{"VP9", VP9, "video/VP9", "profile-id=0", 98},
		{"AV1", AV1, "video/AV1", "", 45},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := webrtc.RTPCodecParameters{
				RTPCodecCapability: webrtc.RTPCodecCapability{
					MimeType: tt.mime, ClockRate: 90000, SDPFmtpLine: tt.fmtp, RTCPFeedback: feedback,
				},
				PayloadType: tt.pt,
			}
			if !reflect.DeepEqual(tt.c, want) {
				t.Fatalf("got %+v, want %+v", tt.c, want)
			}
		})
	}
}

// offer registers the codecs on a fresh MediaEngine and returns the SDP
// offer of a peer connection receiving audio and, if video, video. Nothing
// touches the network: no ICE gathering, no mDNS.
func offer(t *testing.T, video bool) string {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := Register(m, video); err != nil {
		t.Fatal(err)
	}
	s := webrtc.SettingEngine{}
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(s))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	kinds := []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio}
	if video {
		kinds = append(kinds, webrtc.RTPCodecTypeVideo)
	}
	for _, k := range kinds {
		_, err := pc.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly})
		if err != nil {
			t.Fatal(err)
		}
	}
	o, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	return o.SDP
}

func TestRegister(t *testing.T) {
	tests := []struct {
		video  bool
		want   []string
		absent []string
	}{
		{
			video: false,
			want: []string{
				"a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtcp-fb:111 nack",
			},
			absent: []string{"m=video", "a=extmap:"},
		},
		{
			video: true,
			want: []string{
				"m=video 9 UDP/TLS/RTP/SAVPF 96 102 98 45",
				"a=rtpmap:111 opus/48000/2",
				"a=rtpmap:96 VP8/90000",
				"a=rtpmap:102 H264/90000",
				"a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
				"a=rtpmap:98 VP9/90000", "a=fmtp:98 profile-id=0",
				"a=rtpmap:45 AV1/90000",
				"a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtcp-fb:96 ccm fir",
				"a=rtcp-fb:96 goog-remb", "a=rtcp-fb:96 transport-cc",
				"a=rtcp-fb:45 nack pli", "a=rtcp-fb:102 ccm fir", "a=rtcp-fb:98 transport-cc",
			},
			absent: []string{"rtx", "apt=", "a=extmap:", "a=rtcp-fb:111 transport-cc"},
		},
	}
	for _, tt := range tests {
		sdp := offer(t, tt.video)
		lines := map[string]bool{}
		for l := range strings.Lines(sdp) {
			lines[strings.TrimSpace(l)] = true
		}
		for _, w := range tt.want {
			if !lines[w] {
				t.Errorf("video=%v: offer lacks line %q:\n%s", tt.video, w, sdp)
			}
		}
		for _, a := range tt.absent {
			if strings.Contains(sdp, a) {
				t.Errorf("video=%v: offer has %q:\n%s", tt.video, a, sdp)
			}
		}
	}
}

// TestRegisterDoesNotShareFeedback checks that what the MediaEngine does
// to its codecs' feedback does not reach the package's variables.
func TestRegisterDoesNotShareFeedback(t *testing.T) {
	vp8, opus := slices.Clone(VP8.RTCPFeedback), slices.Clone(Opus.RTCPFeedback)
	m := &webrtc.MediaEngine{}
	if err := Register(m, true); err != nil {
		t.Fatal(err)
	}
	m.RegisterFeedback(webrtc.RTCPFeedback{Type: "ack"}, webrtc.RTPCodecTypeVideo)
	m.RegisterFeedback(webrtc.RTCPFeedback{Type: "ack"}, webrtc.RTPCodecTypeAudio)
	if !slices.Equal(VP8.RTCPFeedback, vp8) || !slices.Equal(Opus.RTCPFeedback, opus) {
		t.Fatal("MediaEngine.RegisterFeedback changed the package's codecs")
	}
}

func TestIsVideo(t *testing.T) {
	tests := []struct {
		mime string
		want bool
	}{
		{"video/VP8", true},
		{"video/vp8", true},
		{"VIDEO/H264", true},
		{"video/rtx", true},
		{"video/", false},
		{"video", false},
		{"audio/opus", false},
		{"", false},
		{"videos/x", false},
	}
	for _, tt := range tests {
		if got := IsVideo(tt.mime); got != tt.want {
			t.Errorf("IsVideo(%q) = %v, want %v", tt.mime, got, tt.want)
		}
	}
}

func TestSupported(t *testing.T) {
	tests := []struct {
		mime string
		want bool
	}{
		{"audio/opus", true},
		{"audio/OPUS", true},
		{"video/VP8", true},
		{"video/vp8", true},
		{"video/h264", true},
		{"video/VP9", true},
		{"video/av1", true},
		{"video/H265", false},
		{"video/rtx", false},
		{"audio/PCMU", false},
		{"video/VP8 ", false},
		{"", false},
	}
	for _, tt := range tests {
		if got := Supported(tt.mime); got != tt.want {
			t.Errorf("Supported(%q) = %v, want %v", tt.mime, got, tt.want)
		}
	}
}
