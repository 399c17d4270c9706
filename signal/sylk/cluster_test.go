package sylk_test

import (
	"slices"
	"testing"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/signal/sylk"
)

// TestVideoRoomAcrossRouters: two routers of a cluster on one NATS, alice
// in the room on router A, bob on router B. Each is told of the other as a
// publisher (with the display name the other's client gave), attaches the
// other's feed, and receives the other's VP8 and Opus through the relay,
// video from a keyframe on. The room requests (raised hands, active
// participants, mute everyone) reach the members on the other router.
// An invitation on A reaches an invitee registered on B.
// When alice leaves on A, bob is told on B, her hand goes down there, and
// a feed of her is refused there.
func TestVideoRoomAcrossRouters(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, 3*waitLong)
	ns := testutil.StartNATS(t, testutil.JetStream)
	onCluster := func(c *sylk.Config) {
		c.Rooms = testroom.NewClusterManager(t, ns.URL(), c.Logger)
		c.NATS = testutil.ConnectNATS(t, ns.URL())
	}
	a, b := newEnv(t, onCluster), newEnv(t, onCluster)

	alice := join(t, a, "alice@example.com", frames)
	bob := join(t, b, "bob@example.com", frames)
	alice.untilKnows(t, 1)
	bob.untilKnows(t, 1)
	for _, p := range []struct {
		who   *member
		other string
	}{{alice, "bob@example.com"}, {bob, "alice@example.com"}} {
		e := p.who.known[p.who.idOf(t, p.other)]
		if e.str("display_name") == "" {
			t.Errorf("%s's entry of %s has no display_name: %v", p.who.name, p.other, e)
		}
	}
	alice.attach(t, ctx, bob.aor)
	bob.attach(t, ctx, alice.aor)
	for _, mb := range []*member{alice, bob} {
		for aor, sub := range mb.feeds {
			sub.untilMedia(ctx, mb.name+"←"+aor, 60, 50)
		}
		mb.checkFeeds(t)
	}

	// The room requests cross the routers: alice raises her hand on A,
	// bob makes her active and asks everyone to mute on B.
	aliceID, bobID := bob.idOf(t, alice.aor), alice.idOf(t, bob.aor)
	alice.c.mustAck("videoroom-toggle-hand", map[string]any{"session": alice.session})
	for _, mb := range []*member{alice, bob} {
		if m := mb.c.wait(roomEvent(mb.session, "raised-hands"), mb.name+" raised-hands"); !slices.Equal(ids(m, "raised_hands"), []string{aliceID}) {
			t.Errorf("%s: raised-hands %v, want alice's", mb.name, m["raised_hands"])
		}
	}
	bob.c.mustAck("videoroom-configure", map[string]any{"session": bob.session, "active_participants": []string{aliceID}})
	for _, mb := range []*member{alice, bob} {
		m := mb.c.wait(roomEvent(mb.session, "configure"), mb.name+" configure")
		if m.str("originator") != bobID || !slices.Equal(ids(m, "active_participants"), []string{aliceID}) {
			t.Errorf("%s: configure %v, want bob making alice active", mb.name, m)
		}
	}
	bob.c.mustAck("videoroom-mute-audio-participants", map[string]any{"session": bob.session})
	if m := alice.c.wait(roomEvent(alice.session, "mute-audio"), "alice mute-audio"); m.str("originator") != bobID {
		t.Errorf("alice: mute-audio %v, want from bob", m)
	}

	// An invitation reaches dave, registered on B only.
	dave := b.dial(t, sylk.ProtocolV2)
	dave.login("dave@example.com")
	alice.c.mustAck("videoroom-invite", map[string]any{"session": alice.session, "participants": []string{"dave@example.com"}})
	isInvite := func(m msg) bool { return m.str("sylkrtc") == "account-event" && m.str("event") == "conference-invite" }
	inv := dave.wait(isInvite, "dave's conference-invite from A")
	if org, _ := inv["originator"].(map[string]any); inv.str("room") != roomURI || inv.str("session_id") != aliceID || org["uri"] != alice.aor {
		t.Errorf("dave's invitation %v, want to %s from alice", inv, roomURI)
	}

	// alice leaves A: bob is told on B, and her hand is down there.
	alice.c.mustAck("videoroom-leave", map[string]any{"session": alice.session})
	if m := bob.c.wait(roomEvent(bob.session, "raised-hands"), "bob raised-hands after alice left"); len(ids(m, "raised_hands")) != 0 {
		t.Errorf("bob: raised-hands %v after alice left, want none", m["raised_hands"])
	}
	left := bob.c.wait(roomEvent(bob.session, "publishers-left"), "bob told alice left")
	if ids, _ := left["publishers"].([]any); len(ids) != 1 || ids[0] != aliceID {
		t.Errorf("bob: publishers-left %v, want [%q]", left["publishers"], aliceID)
	}
	if r := bob.c.request("videoroom-feed-attach", map[string]any{"session": bob.session, "publisher": aliceID, "feed": "feed-late"}); r.str("sylkrtc") != "error" {
		t.Errorf("attach to a remote publisher that left: %v, want error", r)
	}
}
