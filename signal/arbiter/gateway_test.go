package arbiter

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testutil"
)

// newCall starts a router with one claimed room and returns both.
func newCall(t *testing.T, cfg Config) (*router, string) {
	t.Helper()
	r := newRouter(t, testutil.ConnectNATS(t, startJetStream(t, "").URL()), cfg)
	r.createRoom(t)
	return r, r.claim(t, "/call")
}

// waitConsumers waits until each client of cs (whose ids are ids) has a
// consumer of every other carrying video frames and audio, and the
// other's features; it logs what each has and fails the test if ctx ends
// first.
func waitConsumers(t *testing.T, ctx context.Context, cs []*client, ids []string) {
	t.Helper()
	err := testutil.Until(ctx, func() bool {
		for i, c := range cs {
			s := c.snap()
			for j, other := range ids {
				if i == j {
					continue
				}
				got, ok := s.consumers[other]
				if !ok || got.frames < 20 || len(got.audio) < 40 || s.feats[other] != (features{Audio: true, Video: true}) {
					return false
				}
			}
		}
		return true
	})
	if err != nil {
		for _, c := range cs {
			s := c.snap()
			for id, got := range s.consumers {
				t.Logf("%s ← %s: %d frames, %d audio, %s", c.id[:4], id[:4], got.frames, len(got.audio), got.state)
			}
			t.Logf("%s: features %v, errors %v", c.id[:4], s.feats, s.errs)
		}
		t.Fatalf("not every participant receives every other: %v", err)
	}
}

// checkConsumer checks what c's consumer of participant other carried,
// got, against other's media, want: VP8 of its size that decodes, Opus
// packets all its own that decode.
func checkConsumer(t *testing.T, c *client, other string, got received, want *media) {
	t.Helper()
	if w, h := vp8Size(got.video); w != want.width || h != want.height {
		t.Errorf("%s's consumer of %s carries VP8 of %dx%d, want %s's %dx%d", c.id[:4], other[:4], w, h, other[:4], want.width, want.height)
	}
	frames, errs := testmedia.DecodeVP8(t, testpeer.ThroughMarker(got.video))
	if frames < 15 || len(errs) > 0 {
		t.Errorf("%s's consumer of %s: %d frames decoded, errors %v", c.id[:4], other[:4], frames, errs)
	}
	foreign := 0
	for _, p := range got.audio {
		if !want.opusSet[string(p)] {
			foreign++
		}
	}
	if foreign > 0 {
		t.Errorf("%s's consumer of %s: %d of %d Opus packets are not %s's", c.id[:4], other[:4], foreign, len(got.audio), other[:4])
	}
	if err := decodeOpus(t, got.audio); err != nil {
		t.Errorf("%s's consumer of %s: Opus does not decode: %v", c.id[:4], other[:4], err)
	}
	t.Logf("%s ← %s: %d VP8 frames decoded (%dx%d), %d Opus packets, all %s's", c.id[:4], other[:4], frames, want.width, want.height, len(got.audio), other[:4])
}

// TestCall: three participants behaving like Arbiter's client join one
// room. Each gets two consumers, each carrying the right participant's VP8
// (decodable by libvpx) and Opus (decodable, every packet one its
// publisher sent), and the features of both others; chat is relayed to the
// others only. Bad input from one participant is answered with errors and
// leaves the call intact. A participant whose socket closes is gone within
// 2 s: the others get clientDisconnect, and every connection of it (its
// producer, its consumers, the others' consumers of it) is closed.
func TestCall(t *testing.T) {
	r, roomID := newCall(t, Config{})
	ctx := deadline(t, waitLong)
	ids := []string{"3f2c6a52-0b1d-4a8e-9a43-1d9c2f0e7a01", "7b9e1c44-5d2a-4f6b-8c1e-2a3b4c5d6e02", "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e03"}
	var cs []*client
	for i, id := range ids {
		cs = append(cs, join(t, r, id, roomID, mediaFor(t, i)))
	}
	began := time.Now()

	// Each client: two consumers with video frames and audio, the features
	// of both others.
	waitConsumers(t, ctx, cs, ids)
	t.Logf("3 participants: every consumer carries video and audio %v after the joins", time.Since(began).Round(time.Millisecond))

	// The room is a conversation keyed by the room id: its bites' key.
	if c := r.cfg.Rooms.Conversation(roomID); c == nil || c.ID != roomID {
		t.Errorf("no conversation %s for the room", roomID)
	}

	// Whose media each consumer carries, and that it decodes.
	for i, c := range cs {
		s := c.snap()
		if len(s.consumers) != 2 {
			t.Errorf("%s has %d consumers, want 2", c.id, len(s.consumers))
		}
		for j, other := range ids {
			if i == j {
				continue
			}
			checkConsumer(t, c, other, s.consumers[other], mediaFor(t, j))
		}
		if errs := s.errs; len(errs) > 0 {
			t.Errorf("%s got errors: %v", c.id[:4], errs)
		}
		for other, n := range s.offers {
			if n != 1 {
				t.Errorf("%s got %d consumer offers for %s, want 1", c.id[:4], n, other[:4])
			}
		}
	}

	// Chat goes to the others, verbatim, not back to the sender.
	msg := `{"id":"m1","sender":"self","content":"hello"}`
	if err := testutil.Until(ctx, func() bool { return cs[0].chat.ReadyState() == webrtc.DataChannelStateOpen }); err != nil {
		t.Fatal("the chat channel did not open")
	}
	if err := cs[0].chat.SendText(msg); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Until(ctx, func() bool {
		return slices.Equal(cs[1].snap().chats, []string{msg}) && slices.Equal(cs[2].snap().chats, []string{msg})
	}); err != nil {
		t.Errorf("chat not relayed: %q, %q", cs[1].snap().chats, cs[2].snap().chats)
	}
	if got := cs[0].snap().chats; len(got) != 0 {
		t.Errorf("chat echoed to its sender: %q", got)
	}
	// A client's own features go to the others as its own, whatever id it
	// wrote (it cannot speak for another).
	if err := cs[1].features.SendText(fmt.Sprintf(`{"id":%q,"features":{"audio":false,"video":true}}`, ids[0])); err != nil {
		t.Fatal(err)
	}
	muted := features{Audio: false, Video: true}
	if err := testutil.Until(ctx, func() bool {
		return cs[0].snap().feats[ids[1]] == muted && cs[2].snap().feats[ids[1]] == muted
	}); err != nil {
		t.Errorf("features not relayed as the sender's: %v, %v", cs[0].snap().feats, cs[2].snap().feats)
	}
	if f, ok := cs[0].snap().feats[ids[0]]; ok {
		t.Errorf("a client's features were relayed under another's id: %v", f)
	}

	// Bad input from participant 0: errors to it, nothing to the others.
	bad := cs[0]
	framesBefore, _ := cs[1].counts(ids[0])
	inputs := []struct {
		name string
		raw  string
		want string // in the error message
	}{
		{"not JSON", `hello`, "not a JSON object"},
		{"unknown action", `{"action":"sendmessage","data":{}}`, "unknown action"},
		{"no data", `{"action":"handshake"}`, "no data"},
		{"second identify", fmt.Sprintf(`{"action":"identify","data":{"id":%q,"roomId":%q,"type":"client"}}`, ids[0], roomID), "already identified"},
		{"another sender", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":%q,"candidate":{"candidate":""}}}`, ids[1], roomID), "sender"},
		{"another room", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":"other","candidate":{"candidate":""}}}`, ids[0]), "roomId"},
		{"roomId an object", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":{}}}`, ids[0]), "roomId"},
		{"unknown consumer", fmt.Sprintf(`{"action":"handshake","data":{"type":"consumer","sender":%q,"remotePeerId":"nobody","roomId":%q,"description":{"type":"answer","sdp":"v=0"}}}`, ids[0], roomID), "no consumer"},
		{"consumer answered twice", fmt.Sprintf(`{"action":"handshake","data":{"type":"consumer","sender":%q,"remotePeerId":%q,"roomId":%q,"description":{"type":"answer","sdp":"v=0"}}}`, ids[0], ids[1], roomID), "already answered"},
		{"second producer offer", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":%q,"description":{"type":"offer","sdp":"v=0"}}}`, ids[0], roomID), "renegotiation"},
		{"bad candidate", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":%q,"candidate":{"candidate":"candidate:1 1 udp 1 169.254.169.254 9 typ host"}}}`, ids[0], roomID), "refused"},
		{"neither", fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":%q}}`, ids[0], roomID), "neither"},
		{"bad type", fmt.Sprintf(`{"action":"handshake","data":{"type":"sfu","sender":%q,"roomId":%q,"candidate":{"candidate":""}}}`, ids[0], roomID), "type must be"},
		{"wrong JSON types", `{"action":"handshake","data":{"type":1,"sender":[]}}`, "handshake"},
	}
	for i, in := range inputs {
		bad.sendRaw([]byte(in.raw))
		if err := testutil.Until(ctx, func() bool { return len(bad.errors()) > i }); err != nil {
			t.Fatalf("%s: no error message", in.name)
		}
		if got := bad.errors()[i]; !strings.Contains(got, in.want) {
			t.Errorf("%s: error %q, want it to say %q", in.name, got, in.want)
		}
	}
	if err := testutil.Until(ctx, func() bool {
		f, _ := cs[1].counts(ids[0])
		return f >= framesBefore+30
	}); err != nil {
		t.Errorf("the bad participant's media stopped after its bad input")
	}
	for _, c := range cs[1:] {
		if errs := c.errors(); len(errs) > 0 {
			t.Errorf("%s got errors for another's bad input: %v", c.id[:4], errs)
		}
	}
	if st := r.Stats(); st.Participants != 3 || st.BadMessages != uint64(len(inputs)) {
		t.Errorf("after bad input: %d participants, %d bad messages; want 3, %d", st.Participants, st.BadMessages, len(inputs))
	}

	// Participant 2 leaves: its tab closes.
	peers := r.cfg.Rooms.Stats().Peers
	if peers != 9 {
		t.Errorf("%d peers with 3 participants, want 9 (a producer and two consumers each)", peers)
	}
	left := time.Now()
	cs[2].leave()
	var late []string
	if err := testutil.Until(ctx, func() bool {
		for _, c := range cs[:2] {
			if _, ok := c.snap().disconnects[ids[2]]; !ok {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatal("no clientDisconnect for the participant that left")
	}
	for _, c := range cs[:2] {
		at := c.snap().disconnects[ids[2]]
		if d := at.Sub(left); d > 2*time.Second {
			late = append(late, fmt.Sprintf("%s after %v", c.id[:4], d))
		}
		t.Logf("%s got clientDisconnect %v after the socket closed", c.id[:4], at.Sub(left).Round(time.Millisecond))
	}
	if len(late) > 0 {
		t.Errorf("clientDisconnect later than 2 s: %v", late)
	}
	if err := testutil.Until(ctx, func() bool { return r.cfg.Rooms.Stats().Peers == 4 }); err != nil {
		t.Errorf("%d peers after one of three left, want 4", r.cfg.Rooms.Stats().Peers)
	}
	t.Logf("peers closed within %v of the leave", time.Since(left).Round(time.Millisecond))
	if st := r.Stats(); st.Participants != 2 || st.Sockets != 2 {
		t.Errorf("after the leave: %d participants, %d sockets; want 2, 2", st.Participants, st.Sockets)
	}
	// The two that stay still hear and see each other.
	f0, a0 := cs[0].counts(ids[1])
	if err := testutil.Until(ctx, func() bool {
		f, a := cs[0].counts(ids[1])
		return f >= f0+15 && a >= a0+25
	}); err != nil {
		t.Error("the remaining participants' call stopped")
	}
}
