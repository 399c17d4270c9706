package arbiter

import (
	"encoding/json"
	"testing"
)

// FuzzParseRequest feeds the gateway's message parser arbitrary frames,
// seeded with the frames Arbiter's client sends: it never panics, accepts
// only identify and handshake, keeps its error messages (which go back to
// the client) short, and reads a roomId as the string it is.
func FuzzParseRequest(f *testing.F) {
	seeds := []string{
		`{"action":"identify","data":{"id":"3f2c6a52-0b1d-4a8e-9a43-1d9c2f0e7a01","roomId":"7b9e1c44-5d2a-4f6b-8c1e-2a3b4c5d6e02","type":"client"}}`,
		`{"action":"identify","data":{"id":"x","roomId":null,"type":"client"}}`,
		`{"action":"identify","data":{"id":"sfu","type":"sfu"}}`,
		`{"action":"handshake","data":{"type":"producer","sender":"a","description":{"type":"offer","sdp":"v=0\r\n"},"roomId":"r"}}`,
		`{"action":"handshake","data":{"type":"producer","sender":"a","candidate":{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"},"roomId":"r"}}`,
		`{"action":"handshake","data":{"type":"consumer","sender":"a","remotePeerId":"b","description":{"type":"answer","sdp":"v=0"},"roomId":1234}}`,
		`{"action":"handshake","data":{"type":"consumer","sender":"a","remotePeerId":"b","candidate":null,"roomId":1e400}}`,
		`{"action":"$disconnect","data":{}}`,
		`{"action":"handshake","data":{"candidate":{"sdpMLineIndex":70000}}}`,
		`[]`, `null`, `"x"`, ``,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b)
		if err != nil {
			if len(err.Error()) > 512 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		if r.action != actionIdentify && r.action != actionHandshake {
			t.Fatalf("accepted action %q", r.action)
		}
		raw := r.identify.RoomID
		if r.action == actionHandshake {
			raw = r.handshake.RoomID
		}
		var s string
		if json.Unmarshal(raw, &s) == nil && s != r.roomID {
			t.Fatalf("roomId %q read as %q", s, r.roomID)
		}
	})
}
