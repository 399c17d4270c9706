package cluster

import (
	"slices"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
)

// TestRemoteParticipant: a front-end's participant on a router makes it
// listen in its conversation (other routers relay it their publishers).
// A participant's frames make one remote participant on the receiving
// router, whatever the number of its tracks: the local participants are
// told it Published (once), find it with its display name, may subscribe
// to it; it leaves with its last track, and they are told it Left. A
// remote participant cannot take a local one's id. Messages of other
// routers' participants reach the local participants' watches.
func TestRemoteParticipant(t *testing.T) {
	ns := testutil.StartNATS(t, testutil.JetStream)
	r := newRouter(t, ns.URL())
	events := make(chan room.Event, 16)
	bob, err := r.rooms.Enter("room-1", room.Identity{ID: "p-bob", Claim: claim.Claim{UserID: "bob@example.com", ClientID: "ws-2"}}, func(e room.Event) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	if got := r.rooms.Listening(); !slices.Equal(got, []string{"room-1"}) {
		t.Fatalf("listening in %v with a participant in room-1", got)
	}

	s := r.relaySub("room-1")
	alice := &publisher{user: "alice@example.com", client: "ws-1", part: "p-alice", display: "Alice"}
	now := time.Now()
	s.handle(appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, now.UnixNano(), alice, rtpPacket(1)), now)
	s.handle(appendFrame(nil, kindPacket, codecVP8, 0, 99, 8, now.UnixNano(), alice, vp8Packet(1)), now)
	select {
	case e := <-events:
		if e.Kind != room.Published || e.Participant.ID != "p-alice" || !e.Participant.Remote() || e.Participant.Display != "Alice" ||
			e.Participant.Claim.UserID != "alice@example.com" {
			t.Fatalf("event %+v (%+v), want alice's Published", e, e.Participant)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bob was not told that alice publishes")
	}
	a := bob.Other("p-alice")
	if a == nil || !a.Publishing() || len(a.Tracks()) != 2 || len(bob.Others()) != 1 {
		t.Fatalf("bob finds %+v among %d others, want alice publishing two tracks", a, len(bob.Others()))
	}
	feed, err := bob.Subscribe(a)
	if err != nil {
		t.Fatalf("bob cannot subscribe to remote alice: %v", err)
	}
	if _, err := a.Subscribe(bob); err == nil {
		t.Error("a remote participant subscribed")
	}

	// A remote participant with a local one's id is refused.
	s.handle(appendFrame(nil, kindPacket, codecOpus, 1, 98, 9, now.UnixNano(), &publisher{user: "mallory", client: "x", part: "p-bob"}, rtpPacket(1)), now)
	if n := r.node.Stats().RemoteTracks; n != 2 {
		t.Fatalf("%d remote tracks, want alice's two (mallory's refused)", n)
	}

	// A message of another router's participant, publishing or not,
	// reaches bob's watch.
	for _, from := range []*publisher{alice, {user: "carol@example.com", client: "ws-3", part: "p-carol"}} {
		s.handle(appendFrame(nil, kindMessage, codecOpus, 0, 99, 0, 0, from, []byte("hello")), now)
		select {
		case e := <-events:
			if e.Kind != room.Message || e.Participant.ID != from.part || string(e.Data) != "hello" {
				t.Fatalf("event %+v, want %s's message", e, from.part)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("bob did not get %s's message", from.part)
		}
	}
	// One over room.MaxMessage reaches nobody (Deliver is synchronous).
	s.handle(appendFrame(nil, kindMessage, codecOpus, 0, 99, 0, 0, alice, make([]byte, room.MaxMessage+1)), now)
	select {
	case e := <-events:
		t.Fatalf("an oversized message reached bob: %+v", e)
	default:
	}
	if st := r.node.Stats(); st.MessagesIn != 3 {
		t.Fatalf("%d messages in, want 3", st.MessagesIn)
	}

	s.handle(appendFrame(nil, kindEnd, codecOpus, 0, 99, 7, now.UnixNano(), alice, nil), now)
	if !a.Publishing() {
		t.Fatal("alice left with one of her two tracks")
	}
	s.handle(appendFrame(nil, kindEnd, codecVP8, 0, 99, 8, now.UnixNano(), alice, nil), now)
	select {
	case e := <-events:
		if e.Kind != room.Left || e.Participant != a {
			t.Fatalf("event %+v, want alice's Left", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("bob was not told that alice left")
	}
	select {
	case <-feed.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("bob's feed of alice did not end when she left")
	}
	if bob.Other("p-alice") != nil || a.Publishing() {
		t.Fatal("alice is still in the room")
	}
	bob.Leave()
	if got := r.rooms.Listening(); len(got) != 0 {
		t.Fatalf("listening in %v after the last participant left", got)
	}
}
