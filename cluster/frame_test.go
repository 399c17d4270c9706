package cluster

import (
	"bytes"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	raw := []byte{0x90, 111, 0, 7, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xf8, 0xff, 0xfe}
	b := appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1234567890, &publisher{user: "alice", client: "phone"}, raw)
	f, err := parseFrame(b)
	if err != nil {
		t.Fatal(err)
	}
	if f.kind != kindPacket || f.ext != 1 || f.origin != 42 || f.key != 7 || f.arrival != 1234567890 ||
		string(f.user) != "alice" || string(f.client) != "phone" || !bytes.Equal(f.raw, raw) {
		t.Fatalf("parsed %+v", f)
	}
	end, err := parseFrame(appendFrame(nil, kindEnd, codecOpus, 0, 42, 7, 1, &publisher{user: "alice", client: "phone"}, nil))
	if err != nil || end.kind != kindEnd || end.key != 7 {
		t.Fatalf("end frame: %+v %v", end, err)
	}
	for name, bad := range map[string][]byte{
		"short":                     b[:headerLen-1],
		"ids cut":                   b[:headerLen+3],
		"no packet":                 appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1, &publisher{user: "alice", client: "phone"}, raw[:11]),
		"not RTP":                   appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1, &publisher{user: "alice", client: "phone"}, append([]byte{0x10}, raw[1:]...)),
		"no user":                   appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1, &publisher{user: "", client: "phone"}, raw),
		"kind":                      appendFrame(nil, 9, codecOpus, 1, 42, 7, 1, &publisher{user: "alice", client: "phone"}, raw),
		"version":                   append([]byte{9}, b[1:]...),
		"v3 no participant":         append([]byte{frameVersionParticipant}, b[1:]...),
		"message of no participant": appendFrame(nil, kindMessage, codecOpus, 0, 42, 0, 0, &publisher{user: "alice", client: "phone"}, raw),
		"v2 opus":                   append([]byte{frameVersionCodec}, b[1:]...),
		"codec":                     append(append([]byte{frameVersionCodec}, b[1:5]...), append([]byte{numCodecs}, b[6:]...)...),
		"empty":                     nil,
		"header only":               b[:headerLen],
	} {
		if _, err := parseFrame(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// TestParticipantFrame: a participant's frame (any codec) is version 3
// and carries the participant's id and display name after the user and
// client ids; a router that knows only versions 1 and 2 drops it.
func TestParticipantFrame(t *testing.T) {
	raw := []byte{0x80, 111, 0, 7, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0xf8}
	for _, cn := range []byte{codecOpus, codecVP8} {
		pub := &publisher{user: "alice@example.com", client: "ws-1", part: "p-42", display: "Alice Ö."}
		b := appendFrame(nil, kindPacket, cn, 1, 42, 7, 1, pub, raw)
		f, err := parseFrame(b)
		if err != nil || b[0] != frameVersionParticipant || f.codec != cn || string(f.user) != pub.user || string(f.client) != pub.client ||
			string(f.part) != pub.part || string(f.display) != pub.display || !bytes.Equal(f.raw, raw) {
			t.Fatalf("codec %d: version %d, parsed %+v %v", cn, b[0], f, err)
		}
		if _, err := parseFrame(b[:headerLen+len(pub.user)+len(pub.client)+len(pub.part)+2]); err == nil {
			t.Errorf("codec %d: a frame cut within the display name parsed", cn)
		}
	}
	if got := truncate("Ünïcødé", 4); got != "Ün" {
		t.Errorf("truncate cut a rune: %q", got)
	}
}

// TestVideoFrame: a video frame names its codec in a version 2 frame (a
// router that knows only version 1 drops it), and an audio frame stays
// version 1.
func TestVideoFrame(t *testing.T) {
	raw := []byte{0x80, 96, 0, 7, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef, 0x10, 0x00}
	for _, tc := range []struct {
		mime    string
		version byte
	}{{"video/VP8", frameVersionCodec}, {"video/h264", frameVersionCodec}, {"audio/opus", frameVersion}} {
		cn, ok := codecOf(tc.mime)
		if !ok {
			t.Fatalf("%s: no codec number", tc.mime)
		}
		b := appendFrame(nil, kindPacket, cn, 0, 42, 7, 1, &publisher{user: "alice", client: "phone"}, raw)
		f, err := parseFrame(b)
		if err != nil || b[0] != tc.version || f.codec != cn || !strings.EqualFold(codecs[f.codec].MimeType, tc.mime) {
			t.Fatalf("%s: version %d, parsed %+v %v", tc.mime, b[0], f, err)
		}
	}
	if _, ok := codecOf("video/AV1"); ok {
		t.Fatal("AV1 has a codec number")
	}
}

func TestTokenIsInjectiveAndReversible(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"", "=", "a", "a.b", "a=2Eb", "conv-1", "u_1", "é", "a b", "*", ">", "%41", "A"} {
		tok := token(id)
		for i := 0; i < len(tok); i++ {
			if !safe(tok[i]) && tok[i] != '=' {
				t.Fatalf("token(%q) = %q has %q", id, tok, tok[i])
			}
		}
		if other, dup := seen[tok]; dup {
			t.Fatalf("token(%q) = token(%q) = %q", id, other, tok)
		}
		seen[tok] = id
		back, ok := untoken(tok)
		if !ok || back != id {
			t.Fatalf("untoken(token(%q)) = %q, %v", id, back, ok)
		}
	}
	for _, bad := range []string{"", "=4", "=ZZ", "a.b", "=4x"} {
		if _, ok := untoken(bad); ok {
			t.Errorf("untoken(%q) accepted", bad)
		}
	}
}

// FuzzParseFrame: no frame or batch makes the parsers panic, what they
// accept encodes back to the same bytes, and a batch's frames parse as
// frames do alone.
func FuzzParseFrame(f *testing.F) {
	pkt := appendFrame(nil, kindPacket, codecOpus, 1, 42, 7, 1, &publisher{user: "alice", client: "phone"}, []byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9})
	end := appendFrame(nil, kindEnd, codecOpus, 0, 42, 7, 1, &publisher{user: "alice", client: "phone"}, nil)
	f.Add(pkt)
	f.Add(end)
	f.Add(appendBatched(appendBatched(startBatch(nil), pkt), end))
	f.Add(appendBatched(startBatch(nil), appendBatched(startBatch(nil), pkt)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 0 && b[0] == frameBatch {
			r, err := readBatch(b)
			if err != nil {
				return
			}
			again := startBatch(nil)
			for fb, ok := r.next(); ok; fb, ok = r.next() {
				_, _ = parseFrame(fb)
				again = appendBatched(again, fb)
			}
			if !bytes.Equal(again, b) {
				t.Fatalf("batch re-encoded differently:\n%x\n%x", b, again)
			}
			return
		}
		fr, err := parseFrame(b)
		if err != nil {
			return
		}
		again := appendFrame(nil, fr.kind, fr.codec, fr.ext, fr.origin, fr.key, fr.arrival, &publisher{user: string(fr.user), client: string(fr.client), part: string(fr.part), display: string(fr.display)}, fr.raw)
		if !bytes.Equal(again[:4], b[:4]) || !bytes.Equal(again[8:], b[8:]) {
			t.Fatalf("re-encoded differently:\n%x\n%x", b, again)
		}
	})
}
