package rtc

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

const offerHead = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

func audio(mid, dir, codec string) string {
	return "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:" + mid + "\r\na=rtpmap:111 " + codec + "\r\na=" + dir + "\r\n"
}

func video(mid, dir, codec string) string {
	return "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:" + mid + "\r\na=rtpmap:96 " + codec + "\r\na=" + dir + "\r\n"
}

// sendOnly returns n sendonly audio m-lines, mids s1 to sn.
func sendOnly(n int, codec string) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(audio("s"+strconv.Itoa(i+1), "sendonly", codec))
	}
	return b.String()
}

func application(mid string) string {
	return "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:" + mid + "\r\na=sctp-port:5000\r\n"
}

func TestParseOffer(t *testing.T) {
	tests := []struct {
		name      string
		sdp       string
		receiving []string
		err       string
		video     bool // parsed for a peer with video
	}{
		{"one sendrecv", offerHead + audio("0", "sendrecv", "opus/48000/2"), []string{"0"}, "", false},
		{"send then receive", offerHead + audio("0", "sendonly", "opus/48000/2") + audio("1", "recvonly", "OPUS/48000/2"), []string{"1"}, "", false},
		{"inactive", offerHead + audio("0", "inactive", "opus/48000/2"), nil, "", false},
		{"not sdp", "hello", nil, "not valid SDP", false},
		{"no audio", offerHead + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n", nil, "no audio", false},
		{"no opus", offerHead + audio("0", "sendrecv", "PCMU/8000"), nil, "Opus", false},
		{"no mid", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n", nil, "no mid", false},
		{"too many", offerHead + strings.Repeat(audio("x", "recvonly", "opus/48000/2"), 3), nil, "at most 2", false},
		{"video ignored without video", offerHead + audio("0", "sendrecv", "opus/48000/2") + video("1", "recvonly", "VP8/90000"), []string{"0"}, "", false},
		{"video received", offerHead + audio("0", "sendonly", "opus/48000/2") + video("1", "recvonly", "VP8/90000"), []string{"1"}, "", true},
		{"video only", offerHead + video("0", "sendonly", "H264/90000"), nil, "", true},
		{"unknown video codec only", offerHead + video("0", "sendonly", "H265/90000"), nil, "no m-line offers", true},
		{"video m-line without mid", offerHead + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", nil, "video m-line 1 has no mid", true},
		{"too many with video", offerHead + audio("0", "recvonly", "opus/48000/2") + video("1", "recvonly", "VP8/90000") + video("2", "recvonly", "AV1/90000"), nil, "3 receiving m-lines, at most 2", true},
		// Every m-line counts against the bound of 32, whatever its
		// direction or kind: each is a transceiver, and may be a track.
		{"32 m-lines", offerHead + audio("0", "sendrecv", "opus/48000/2") + sendOnly(31, "opus/48000/2"), []string{"0"}, "", false},
		{"33 m-lines", offerHead + audio("0", "sendrecv", "opus/48000/2") + sendOnly(32, "opus/48000/2"), nil, "33 m-lines, at most 32", false},
		{"33 m-lines, one of them data", offerHead + audio("0", "sendrecv", "opus/48000/2") + sendOnly(31, "opus/48000/2") + application("d"), nil, "33 m-lines, at most 32", false},
		{"33 m-lines, unusable ones too", offerHead + audio("0", "sendrecv", "opus/48000/2") + sendOnly(32, "PCMU/8000"), nil, "33 m-lines, at most 32", false},
		{"33 video m-lines on an audio peer", offerHead + audio("0", "sendrecv", "opus/48000/2") + strings.Repeat(video("v", "sendonly", "VP8/90000"), 32), nil, "33 m-lines, at most 32", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOffer(tt.sdp, 2, 32, tt.video)
			if tt.err != "" {
				if !errors.Is(err, ErrBadOffer) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want ErrBadOffer with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(o.receiving, ",") != strings.Join(tt.receiving, ",") {
				t.Fatalf("receiving %v, want %v", o.receiving, tt.receiving)
			}
		})
	}
}

func FuzzParseOffer(f *testing.F) {
	f.Add(offerHead + audio("0", "sendrecv", "opus/48000/2"))
	f.Add(offerHead + audio("0", "sendonly", "opus/48000/2") + audio("1", "recvonly", "opus/48000/2"))
	f.Add("v=0\r\n")
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseOffer(s, DefaultMaxDownTracks, DefaultMaxMediaLines, false)
		if err != nil && !errors.Is(err, ErrBadOffer) {
			t.Fatalf("error not wrapping ErrBadOffer: %v", err)
		}
		if len(o.receiving) > DefaultMaxDownTracks {
			t.Fatalf("%d slots", len(o.receiving))
		}
	})
}

// TestVideoOnAudioPeer: a peer without video (Beep's /connect) answers an
// offer with a video m-line by rejecting that m-line (port 0), and a peer
// with video gets a down-track for it.
func TestVideoOnAudioPeer(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(t.Context())
	for _, tc := range []struct {
		name       string
		video      bool
		wantVideo  string // the answer's video m-line starts so
		wantDowns  int
		wantKindsV int
	}{
		{"audio peer", false, "m=video 0 ", 1, 0},
		{"video peer", true, "m=video 9 ", 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m webrtc.MediaEngine
			if err := m.RegisterDefaultCodecs(); err != nil {
				t.Fatal(err)
			}
			client, err := webrtc.NewAPI(webrtc.WithMediaEngine(&m)).NewPeerConnection(webrtc.Configuration{})
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
				if _, err := client.AddTransceiverFromKind(k); err != nil {
					t.Fatal(err)
				}
			}
			offer, err := client.CreateOffer(nil)
			if err != nil {
				t.Fatal(err)
			}
			p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{Video: tc.video})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			answer, err := p.Answer(offer.SDP)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(answer, "\r\n"+tc.wantVideo) {
				t.Errorf("answer's video m-line does not start %q:\n%s", tc.wantVideo, answer)
			}
			video := 0
			for _, d := range p.DownTracks() {
				if d.Kind() == webrtc.RTPCodecTypeVideo {
					video++
				}
			}
			if len(p.DownTracks()) != tc.wantDowns || video != tc.wantKindsV {
				t.Errorf("%d down-tracks, %d of them video; want %d and %d", len(p.DownTracks()), video, tc.wantDowns, tc.wantKindsV)
			}
		})
	}
}
