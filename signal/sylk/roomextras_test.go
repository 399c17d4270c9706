package sylk_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/beepvoice/router/internal/testmedia"
)

// ids returns the string list of field k of m (nil when it is no list).
func ids(m msg, k string) []string {
	list, ok := m[k].([]any)
	if !ok {
		return nil
	}
	out := []string{}
	for _, v := range list {
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

// TestVideoRoomExtras: videoroom-configure tells every member the active
// participants; videoroom-toggle-hand keeps the raised hands (a joiner is
// told them; a participant may lower another's hand, not raise it; a
// leaver's hand goes down); videoroom-mute-audio-participants asks the
// others to mute; videoroom-invite reaches the invitee's registered
// socket. Participants are named by the publisher ids the clients know.
// Invalid requests get errors; the other optional requests stay "not
// supported".
func TestVideoRoomExtras(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	e := newEnv(t, nil)
	alice := join(t, e, "alice@example.com", frames)
	bob := join(t, e, "bob@example.com", frames)
	alice.untilKnows(t, 1)
	carol := join(t, e, "carol@example.com", frames)
	alice.untilKnows(t, 2)
	bob.untilKnows(t, 2)
	members := []*member{alice, bob, carol}
	aliceID, bobID, carolID := bob.idOf(t, alice.aor), alice.idOf(t, bob.aor), alice.idOf(t, carol.aor)

	// configure: every member, the originator too, gets the list.
	alice.c.mustAck("videoroom-configure", map[string]any{"session": alice.session, "active_participants": []string{bobID, carolID}})
	for _, mb := range members {
		m := mb.c.wait(roomEvent(mb.session, "configure"), mb.name+" configure")
		if got := ids(m, "active_participants"); !slices.Equal(got, []string{bobID, carolID}) || m.str("originator") != aliceID {
			t.Errorf("%s: configure %v, want active [%s %s] from %s", mb.name, m, bobID, carolID, aliceID)
		}
	}
	for _, bad := range []map[string]any{
		{"session": alice.session, "active_participants": []string{"nobody"}},
		{"session": alice.session, "active_participants": []string{bobID, carolID, aliceID}},
		{"session": alice.session},
		{"session": "not-a-session", "active_participants": []string{}},
	} {
		if r := alice.c.request("videoroom-configure", bad); r.str("sylkrtc") != "error" {
			t.Errorf("videoroom-configure %v: %v, want error", bad, r)
		}
	}

	// Raised hands, in the order raised, to everyone.
	hands := func(want ...string) {
		t.Helper()
		for _, mb := range members {
			m := mb.c.wait(roomEvent(mb.session, "raised-hands"), mb.name+" raised-hands")
			if got := ids(m, "raised_hands"); got == nil || !slices.Equal(got, want) {
				t.Errorf("%s: raised-hands %v, want %q", mb.name, m["raised_hands"], want)
			}
		}
	}
	bob.c.mustAck("videoroom-toggle-hand", map[string]any{"session": bob.session})
	hands(bobID)
	carol.c.mustAck("videoroom-toggle-hand", map[string]any{"session": carol.session})
	hands(bobID, carolID)
	alice.c.mustAck("videoroom-toggle-hand", map[string]any{"session": alice.session, "session_id": bobID}) // lowers Bob's
	hands(carolID)
	if r := alice.c.request("videoroom-toggle-hand", map[string]any{"session": alice.session, "session_id": bobID}); r.str("sylkrtc") != "error" {
		t.Errorf("raising another's hand: %v, want error", r)
	}
	if r := alice.c.request("videoroom-toggle-hand", map[string]any{"session": alice.session, "session_id": "nobody"}); r.str("sylkrtc") != "error" {
		t.Errorf("toggling a stranger's hand: %v, want error", r)
	}

	// A joiner is told the hands up; it can be invited, and it cannot act
	// on another socket's session.
	dave := join(t, e, "dave@example.com", frames)
	if m := dave.c.wait(roomEvent(dave.session, "raised-hands"), "dave raised-hands"); !slices.Equal(ids(m, "raised_hands"), []string{carolID}) {
		t.Errorf("dave: raised-hands %v, want [%s]", m["raised_hands"], carolID)
	}
	members = append(members, dave)
	for _, mb := range []*member{alice, bob, carol} {
		mb.untilKnows(t, 3)
	}
	if r := dave.c.request("videoroom-toggle-hand", map[string]any{"session": alice.session}); r.str("sylkrtc") != "error" {
		t.Errorf("toggle-hand of another socket's session: %v, want error", r)
	}
	alice.c.mustAck("videoroom-invite", map[string]any{"session": alice.session, "participants": []string{"dave@example.com", "nobody@example.com", "alice@example.com"}})
	inv := dave.c.wait(func(m msg) bool { return m.str("sylkrtc") == "account-event" && m.str("event") == "conference-invite" }, "conference-invite")
	orig, _ := inv["originator"].(map[string]any)
	if inv.str("account") != dave.aor || inv.str("room") != roomURI || inv.str("session_id") != aliceID || orig == nil || orig["uri"] != alice.aor {
		t.Errorf("conference-invite %v: want account %s, room %s, session_id %s, originator %s", inv, dave.aor, roomURI, aliceID, alice.aor)
	}
	if i := alice.c.index(func(m msg) bool { return m.str("event") == "conference-invite" }); i >= 0 {
		t.Errorf("alice invited herself: %v", alice.c.all()[i])
	}
	for _, bad := range []map[string]any{
		{"session": alice.session, "participants": []string{}},
		{"session": alice.session, "participants": []string{"no-at-sign"}},
	} {
		if r := alice.c.request("videoroom-invite", bad); r.str("sylkrtc") != "error" {
			t.Errorf("videoroom-invite %v: %v, want error", bad, r)
		}
	}

	// Mute everyone: the others are asked, not the originator.
	bob.c.mustAck("videoroom-mute-audio-participants", map[string]any{"session": bob.session})
	for _, mb := range []*member{alice, carol, dave} {
		if m := mb.c.wait(roomEvent(mb.session, "mute-audio"), mb.name+" mute-audio"); m.str("originator") != bobID {
			t.Errorf("%s: mute-audio %v, want originator %s", mb.name, m, bobID)
		}
	}
	if i := bob.c.index(roomEvent(bob.session, "mute-audio")); i >= 0 {
		t.Errorf("bob was asked to mute himself: %v", bob.c.all()[i])
	}

	// Carol leaves with her hand up: it goes down for the others.
	carol.c.mustAck("videoroom-leave", map[string]any{"session": carol.session})
	members = []*member{alice, bob, dave}
	hands()

	// The rest stay not supported.
	for _, typ := range []string{"videoroom-message", "videoroom-session-update", "videoroom-composing-indication"} {
		r := alice.c.request(typ, map[string]any{"session": alice.session})
		if r.str("sylkrtc") != "error" || r.str("error") != typ+": not supported" {
			t.Errorf("%s: %v, want error %q", typ, r, typ+": not supported")
		}
	}
}

// TestRoomRequestsThrottled: a socket's room requests, which reach every
// member of the room on every router, are bounded: a burst is answered,
// those past it get an error and are counted, and none is lost unanswered.
func TestRoomRequestsThrottled(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	e := newEnv(t, nil)
	alice := join(t, e, "alice@example.com", frames)
	// 100 at once: more than the burst and what the rate refills over
	// the seconds even a slow machine takes to send them.
	const n = 100
	txs := make([]string, n)
	for i := range txs {
		txs[i] = alice.c.tx()
		alice.c.send(map[string]any{"sylkrtc": "videoroom-mute-audio-participants", "transaction": txs[i], "session": alice.session})
	}
	acks, refused := 0, 0
	for _, tx := range txs {
		r := alice.c.reply(tx)
		switch {
		case r.str("sylkrtc") == "ack":
			acks++
		case strings.Contains(r.str("error"), "too many room requests"):
			refused++
		default:
			t.Errorf("reply %v, want an ack or too many room requests", r)
		}
	}
	if acks < 20 || refused == 0 {
		t.Errorf("%d acked, %d refused, want the burst (20) acked and some refused", acks, refused)
	}
	if st := e.srv.Stats(); st.Throttled != uint64(refused) {
		t.Errorf("Stats.Throttled %d, want %d", st.Throttled, refused)
	}
}
