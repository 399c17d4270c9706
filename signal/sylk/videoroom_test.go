package sylk_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/rtc/codec"
	"github.com/beepvoice/router/signal/sylk"
)

const roomURI = "room1@conference.example.com"

// member is one account in a video room: its socket, its publishing
// peer, the publishers it was told of and its feeds.
type member struct {
	name    string
	aor     string
	c       *client
	session string
	pub     *peer
	known   map[string]msg // publisher id → its entry
	feeds   map[string]*peer
}

// join makes aor publish VP8 and Opus in the room, as sylkrtc.js does:
// the join carries a sendonly offer without candidates, trickled after
// it. It checks the order progress, accepted (with the router's
// candidates), initial-publishers, then the ack.
func join(t *testing.T, e *env, aor string, frames []testmedia.Frame) *member {
	t.Helper()
	c := e.dial(t, sylk.ProtocolV2)
	c.login(aor)
	mb := &member{name: aor[:strings.IndexByte(aor, '@')], aor: aor, c: c, session: "conf-" + aor, known: map[string]msg{}, feeds: map[string]*peer{}}
	mb.pub = newPeer(t, frames)
	mb.pub.addTracks(webrtc.RTPTransceiverDirectionSendonly)
	offer := mb.pub.offer()
	tx := c.tx()
	c.send(map[string]any{"sylkrtc": "videoroom-join", "transaction": tx, "account": aor, "session": mb.session, "uri": roomURI, "sdp": offer, "audio": true, "video": true})
	mb.pub.trickle(c, "videoroom-session-trickle", mb.session)
	if r := c.reply(tx); r.str("sylkrtc") != "ack" {
		t.Fatalf("%s: videoroom-join: %v", aor, r)
	}
	accepted := c.wait(roomState(mb.session, "accepted"), aor+" accepted")
	if accepted["audio"] != true || accepted["video"] != true || candidates(accepted.str("sdp")) == 0 {
		t.Fatalf("%s: accepted %v: want audio, video and an SDP with the router's candidates", aor, accepted)
	}
	initial := c.wait(roomEvent(mb.session, "initial-publishers"), aor+" initial-publishers")
	order := []int{
		c.index(roomState(mb.session, "progress")),
		c.index(roomState(mb.session, "accepted")),
		c.index(roomEvent(mb.session, "initial-publishers")),
		c.index(func(m msg) bool { return m.str("transaction") == tx }),
	}
	if !slices.IsSorted(order) || order[0] < 0 {
		t.Errorf("%s: progress, accepted, initial-publishers and the ack arrived at %v, want in that order", aor, order)
	}
	mb.pub.apply(accepted.str("sdp"))
	mb.learn(initial)
	c.wait(roomState(mb.session, "established"), aor+" established")
	return mb
}

// learn notes the publishers of an initial-publishers or publishers-joined
// event.
func (mb *member) learn(m msg) {
	list, ok := m["publishers"].([]any)
	if !ok {
		panic("publishers is not a list")
	}
	for _, p := range list {
		entry := msg(p.(map[string]any))
		mb.known[entry.str("id")] = entry
	}
}

// untilKnows waits until mb was told of n publishers.
func (mb *member) untilKnows(t *testing.T, n int) {
	t.Helper()
	for len(mb.known) < n {
		mb.learn(mb.c.wait(roomEvent(mb.session, "publishers-joined"), mb.name+" publishers-joined"))
	}
}

// idOf returns the publisher id mb knows aor by.
func (mb *member) idOf(t *testing.T, aor string) string {
	t.Helper()
	for id, e := range mb.known {
		if e.str("uri") == aor {
			return id
		}
	}
	t.Fatalf("%s does not know %s: %v", mb.name, aor, mb.known)
	return ""
}

// attach attaches mb to the publisher aor: the router's offer carries its
// candidates and a=ssrc in every m-section; the answer's candidates are
// trickled keyed by the feed id.
func (mb *member) attach(t *testing.T, ctx context.Context, aor string) {
	t.Helper()
	feedID := "feed-" + mb.name + "-" + aor
	mb.c.mustAck("videoroom-feed-attach", map[string]any{"session": mb.session, "publisher": mb.idOf(t, aor), "feed": feedID})
	attached := mb.c.wait(func(m msg) bool { return roomEvent(mb.session, "feed-attached")(m) && m.str("feed") == feedID }, "feed-attached")
	offer := attached.str("sdp")
	if err := ssrcInEveryMedia(offer); err != nil {
		t.Errorf("feed %s: %v", feedID, err)
	}
	if candidates(offer) == 0 {
		t.Errorf("feed %s: the offer has no candidates", feedID)
	}
	sub := newPeer(t, nil)
	answer := sub.answer(offer)
	mb.c.mustAck("videoroom-feed-answer", map[string]any{"session": mb.session, "feed": feedID, "sdp": answer})
	sub.trickle(mb.c, "videoroom-session-trickle", feedID)
	mb.feeds[aor] = sub
	mb.c.wait(func(m msg) bool { return roomEvent(mb.session, "feed-established")(m) && m.str("feed") == feedID }, "feed-established "+feedID)
	sub.waitConnected(ctx, feedID)
}

// checkFeeds checks the video of each of mb's feeds: VP8, at least 50
// frames decoded without errors, from a keyframe on.
func (mb *member) checkFeeds(t *testing.T) {
	t.Helper()
	for aor, sub := range mb.feeds {
		n, errs, mime := sub.decodeVideo()
		first, _, _ := sub.First()
		_, audio := sub.Counts()
		t.Logf("feed %s←%s: %d VP8 frames decoded, %d audio packets", mb.name, aor, n, audio)
		if !strings.EqualFold(mime, webrtc.MimeTypeVP8) || n < 50 || len(errs) > 0 {
			t.Errorf("feed %s←%s: %s, %d frames decoded, want VP8 and ≥ 50; errors %q", mb.name, aor, mime, n, errs)
		}
		if !codec.Keyframe(webrtc.MimeTypeVP8, first.Payload) {
			t.Errorf("feed %s←%s: the first video packet does not start a keyframe", mb.name, aor)
		}
	}
}

// TestVideoRoomThreePublishers: three accounts publish VP8 and Opus in one
// room and each attaches the other two. Publisher ids are the same for
// everyone; a joiner sees those who publish in initial-publishers, the
// others learn of it by publishers-joined; every feed's video starts at a
// keyframe and decodes; every trickle is acked; a leave says terminated
// before its ack and the others get publishers-left with its id.
func TestVideoRoomThreePublishers(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, 3*waitLong)
	e := newEnv(t, nil)
	alice := join(t, e, "alice@example.com", frames)
	bob := join(t, e, "bob@example.com", frames)
	alice.untilKnows(t, 1)
	bob.untilKnows(t, 1)
	carol := join(t, e, "carol@example.com", frames)
	// Alice and Bob publish by now: Carol finds them in initial-publishers.
	if len(carol.known) != 2 {
		t.Fatalf("carol's initial-publishers: %v, want alice and bob", carol.known)
	}
	for _, mb := range []*member{alice, bob} {
		mb.untilKnows(t, 2)
	}
	members := []*member{alice, bob, carol}
	for _, a := range members {
		for _, b := range members {
			if a == b {
				continue
			}
			for _, o := range members {
				if o != a && o != b && a.idOf(t, o.aor) != b.idOf(t, o.aor) {
					t.Errorf("%s and %s know %s by different ids", a.name, b.name, o.name)
				}
			}
			if e := a.known[a.idOf(t, b.aor)]; e.str("display_name") == "" {
				t.Errorf("%s's entry of %s has no display_name: %v", a.name, b.name, e)
			}
		}
	}

	for _, a := range members {
		for _, b := range members {
			if a != b {
				a.attach(t, ctx, b.aor)
			}
		}
	}
	for _, a := range members {
		for aor, sub := range a.feeds {
			sub.untilMedia(ctx, a.name+"←"+aor, 60, 50)
		}
	}
	for _, a := range members {
		a.checkFeeds(t)
		for _, sub := range a.feeds {
			sub.checkTrickles()
		}
		a.pub.checkTrickles()
	}

	// Carol leaves: terminated before the ack; the others are told.
	carolID := alice.idOf(t, carol.aor)
	tx := carol.c.tx()
	carol.c.send(map[string]any{"sylkrtc": "videoroom-leave", "transaction": tx, "session": carol.session})
	if r := carol.c.reply(tx); r.str("sylkrtc") != "ack" {
		t.Fatalf("videoroom-leave: %v", r)
	}
	term := carol.c.index(roomState(carol.session, "terminated"))
	ack := carol.c.index(func(m msg) bool { return m.str("transaction") == tx })
	if term < 0 || term > ack {
		t.Errorf("videoroom-leave: terminated at %d, ack at %d: want terminated first", term, ack)
	}
	for _, mb := range []*member{alice, bob} {
		left := mb.c.wait(roomEvent(mb.session, "publishers-left"), mb.name+" publishers-left")
		if ids, _ := left["publishers"].([]any); len(ids) != 1 || ids[0] != carolID {
			t.Errorf("%s: publishers-left %v, want [%q]", mb.name, left["publishers"], carolID)
		}
	}
	// The session is gone: its trickle and a feed of it are refused.
	if r := carol.c.request("videoroom-session-trickle", map[string]any{"session": carol.session, "candidates": []any{}}); r.str("sylkrtc") != "error" {
		t.Errorf("trickle after leave: %v, want error", r)
	}
	if r := alice.c.request("videoroom-feed-attach", map[string]any{"session": alice.session, "publisher": carolID, "feed": "feed-late"}); r.str("sylkrtc") != "error" {
		t.Errorf("attach to a publisher that left: %v, want error", r)
	}
	// Detach works, and a second detach of the same feed is refused.
	feedID := "feed-alice-bob@example.com"
	alice.c.mustAck("videoroom-feed-detach", map[string]any{"session": alice.session, "feed": feedID})
	if r := alice.c.request("videoroom-feed-detach", map[string]any{"session": alice.session, "feed": feedID}); r.str("sylkrtc") != "error" {
		t.Errorf("second detach: %v, want error", r)
	}
	if st := e.srv.Stats(); st.RoomJoins != 3 || st.Feeds != 6 {
		t.Errorf("stats: %+v, want 3 joins and 6 feeds", st)
	}
}

// TestVideoRoomRefusals: a join is refused, with an error reply carrying
// the transaction, when the account is not registered, the permission
// service says no or cannot answer (fail closed), the URI has no @, the
// offer is not SDP, or the session id is in use; a request naming another
// socket's session is refused.
func TestVideoRoomRefusals(t *testing.T) {
	deny := checkerFunc(func(_ context.Context, user, conv string) error {
		switch conv {
		case "closed@conference.example.com":
			return permissions.ErrDenied
		case "broken@conference.example.com":
			return permissions.ErrUnavailable
		}
		return nil
	})
	e := newEnv(t, func(c *sylk.Config) { c.Permissions = deny })
	c := e.dial(t, sylk.ProtocolV2)
	other := e.dial(t, sylk.ProtocolV2)
	other.login("bob@example.com")
	p := newPeer(t, testmedia.Frames(t, testmedia.VP8(t)))
	p.addTracks(webrtc.RTPTransceiverDirectionSendonly)
	offer := p.offer()
	other.mustAck("videoroom-join", map[string]any{"account": "bob@example.com", "session": "bob-conf", "uri": roomURI, "sdp": offer})

	c.mustAck("account-add", map[string]any{"account": "alice@example.com", "password": ha1("alice@example.com", "wrong")})
	join := func(session, uri, sdp string) map[string]any {
		return map[string]any{"account": "alice@example.com", "session": session, "uri": uri, "sdp": sdp}
	}
	if r := c.request("videoroom-join", join("s1", roomURI, offer)); r.str("sylkrtc") != "error" || !strings.Contains(r.str("error"), "not registered") {
		t.Errorf("join with a wrong password: %v, want error not registered", r)
	}
	c.mustAck("account-remove", map[string]any{"account": "alice@example.com"})
	c.login("alice@example.com")
	tests := []struct {
		name, session, uri, sdp, want string
	}{
		{"denied", "s2", "closed@conference.example.com", offer, "403"},
		{"permission service down", "s3", "broken@conference.example.com", offer, "503"},
		{"uri without @", "s4", "room1", offer, "invalid videoroom-join"},
		{"not SDP", "s5", roomURI, "hello", "invalid videoroom-join"},
		{"bad SDP", "s6", roomURI, "v=0\r\nnonsense\r\n", "invalid videoroom-join"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := c.request("videoroom-join", join(tt.session, tt.uri, tt.sdp))
			if r.str("sylkrtc") != "error" || !strings.Contains(r.str("error"), tt.want) || r.str("transaction") == "" {
				t.Errorf("%v, want an error with %q and the transaction", r, tt.want)
			}
		})
	}
	// Another socket's session: never acted on.
	for _, req := range []struct {
		typ    string
		fields map[string]any
	}{
		{"videoroom-leave", map[string]any{"session": "bob-conf"}},
		{"videoroom-session-trickle", map[string]any{"session": "bob-conf", "candidates": []any{}}},
		{"videoroom-feed-attach", map[string]any{"session": "bob-conf", "publisher": "x", "feed": "f"}},
		{"session-terminate", map[string]any{"session": "bob-conf"}},
	} {
		if r := c.request(req.typ, req.fields); r.str("sylkrtc") != "error" {
			t.Errorf("%s of another socket's session: %v, want error", req.typ, r)
		}
	}
	if r := other.request("ping", nil); r.str("sylkrtc") != "ack" {
		t.Errorf("bob's socket after the refusals: %v", r)
	}
}

// checkerFunc is a permissions.Checker.
type checkerFunc func(ctx context.Context, user, conv string) error

func (f checkerFunc) Check(ctx context.Context, user, conv string) error { return f(ctx, user, conv) }
