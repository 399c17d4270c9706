package rtc

import (
	"errors"
	"strings"
	"testing"
)

const offerHead = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

func audio(mid, dir, codec string) string {
	return "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:" + mid + "\r\na=rtpmap:111 " + codec + "\r\na=" + dir + "\r\n"
}

func TestParseOffer(t *testing.T) {
	tests := []struct {
		name      string
		sdp       string
		receiving []string
		err       string
	}{
		{"one sendrecv", offerHead + audio("0", "sendrecv", "opus/48000/2"), []string{"0"}, ""},
		{"send then receive", offerHead + audio("0", "sendonly", "opus/48000/2") + audio("1", "recvonly", "OPUS/48000/2"), []string{"1"}, ""},
		{"inactive", offerHead + audio("0", "inactive", "opus/48000/2"), nil, ""},
		{"not sdp", "hello", nil, "not valid SDP"},
		{"no audio", offerHead + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n", nil, "no audio"},
		{"no opus", offerHead + audio("0", "sendrecv", "PCMU/8000"), nil, "Opus"},
		{"no mid", offerHead + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n", nil, "no mid"},
		{"too many", offerHead + strings.Repeat(audio("x", "recvonly", "opus/48000/2"), 3), nil, "at most 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOffer(tt.sdp, 2, false)
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
		o, err := parseOffer(s, DefaultMaxDownTracks, false)
		if err != nil && !errors.Is(err, ErrBadOffer) {
			t.Fatalf("error not wrapping ErrBadOffer: %v", err)
		}
		if len(o.receiving) > DefaultMaxDownTracks {
			t.Fatalf("%d slots", len(o.receiving))
		}
	})
}
