package cluster

import (
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// announce publishes an interest heartbeat as router id would.
func announce(t testing.TB, nc *nats.Conn, id string, beat time.Duration, convs ...string) {
	t.Helper()
	b, _ := json.Marshal(interestMsg{Op: opHeartbeat, Router: id, Convs: convs, Beat: beat.Milliseconds()})
	if err := nc.Publish(DefaultPrefix+"interest", b); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestInterestExpires: a router that announced interest and went silent
// (no goodbye: killed) is no longer relayed to after three of its
// heartbeats; one that says goodbye, at once.
func TestInterestExpires(t *testing.T) {
	ns := testutil.StartNATS(t, testutil.JetStream)
	a := newRouter(t, ns.URL())
	nc := connect(t, ns.URL())

	announce(t, nc, "ghost", 100*time.Millisecond, "c-1", "c-2")
	testutil.Eventually(t, 5*time.Second, "interest of ghost", func() bool {
		return a.node.Relaying("c-1") == 1 && a.node.Relaying("c-2") == 1
	})
	silent := time.Now()
	testutil.Eventually(t, 2*time.Second, "ghost expired", func() bool { return a.node.Relaying("c-1") == 0 })
	if d := time.Since(silent); d < 200*time.Millisecond {
		t.Errorf("ghost expired after %v, before three heartbeats", d)
	} else {
		t.Logf("silent router dropped after %v (3 heartbeats of 100 ms + one check)", d.Round(time.Millisecond))
	}

	announce(t, nc, "leaver", time.Hour, "c-3")
	testutil.Eventually(t, 5*time.Second, "interest of leaver", func() bool { return a.node.Relaying("c-3") == 1 })
	b, _ := json.Marshal(interestMsg{Op: opBye, Router: "leaver"})
	if err := nc.Publish(DefaultPrefix+"interest", b); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, time.Second, "leaver gone", func() bool { return a.node.Relaying("c-3") == 0 })
	if s := a.node.Stats(); s.SubjectsOut != 0 || s.Routers != 0 {
		t.Errorf("stats after both left: %+v", s)
	}
}

// TestRelayOnlyWithInterest: a local track's packets are published on its
// conversation's subject only while another router listens in it, and a
// move to another conversation ends the track there (an end frame).
func TestRelayOnlyWithInterest(t *testing.T) {
	ns := testutil.StartNATS(t, testutil.JetStream)
	a := newRouter(t, ns.URL())
	nc := connect(t, ns.URL())
	frames := watchRelay(t, ns.URL())

	if err := a.rooms.Join("alice", "c-1"); err != nil {
		t.Fatal(err)
	}
	tr := openRelay(t, a, "alice")
	pkt := rtpPacket(1)
	if err := tr.WriteRTP(pkt, time.Now()); err != nil {
		t.Fatal(err)
	}
	announce(t, nc, "other", time.Hour, "c-1")
	testutil.Eventually(t, 5*time.Second, "interest in c-1", func() bool { return a.node.Relaying("c-1") == 1 })
	if err := tr.WriteRTP(rtpPacket(2), time.Now()); err != nil {
		t.Fatal(err)
	}
	m := next(t, frames)
	f, err := parseFrame(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != DefaultPrefix+"relay.c-1" || f.kind != kindPacket || string(f.user) != "alice" || binary.BigEndian.Uint16(f.raw[2:4]) != 2 {
		t.Fatalf("relayed %s %+v; want packet 2 of alice on c-1 (packet 1 went before any interest)", m.Subject, f)
	}
	if err := a.rooms.Join("alice", "c-2"); err != nil {
		t.Fatal(err)
	}
	if err := tr.WriteRTP(rtpPacket(3), time.Now()); err != nil {
		t.Fatal(err)
	}
	m = next(t, frames)
	if f, err := parseFrame(m.Data); err != nil || f.kind != kindEnd || m.Subject != DefaultPrefix+"relay.c-1" {
		t.Fatalf("after the move: %s %+v %v, want the end on c-1", m.Subject, f, err)
	}
	// Nobody listens in c-2: packet 3 was not even queued. Once every
	// frame is back in its free list, the count says what went out.
	testutil.Eventually(t, 5*time.Second, "the senders idle", func() bool {
		for _, s := range a.node.shards {
			if len(s.free) != cap(s.free) {
				return false
			}
		}
		return true
	})
	if out := a.node.Stats().RelayedOut; out != 2 {
		t.Fatalf("%d frames relayed, want 2 (packet 2 and the end on c-1)", out)
	}
	tr.Close()
}

// openRelay returns the relay of a local audio track of user, as a peer's
// reader would get it.
func openRelay(t testing.TB, r *router, user string) rtc.TrackSink {
	t.Helper()
	up := rtc.NewUpTrack(claim.Claim{UserID: user, ClientID: user + "-phone"}, 1234, 1)
	ts, err := r.node.Sink(nopSink{}).Open(room.NewTrack(r.rooms.User(user), up))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ts.(*trackRelay); !ok {
		t.Fatalf("sink of an audio track is %T, not a relay", ts)
	}
	return ts
}

// rtpPacket returns an Opus RTP packet with sequence number seq and an
// audio level extension (id 1, level 10).
func rtpPacket(seq uint16) []byte {
	b := []byte{0x90, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0x04, 0xd2, 0xbe, 0xde, 0, 1, 0x10, 10, 0, 0, 0xf8, 0xff, 0xfe}
	binary.BigEndian.PutUint16(b[2:4], seq)
	binary.BigEndian.PutUint32(b[4:8], uint32(seq)*960)
	return b
}

func next(t *testing.T, ch <-chan *nats.Msg) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no relay frame")
		return nil
	}
}

// TestSilentRouterTracksEnd: the remote tracks of a router that went
// silent (its heartbeats, which name the origin of its frames, stopped: it
// was killed) end when its interest expires, after three of its
// heartbeats, long before RemoteIdle; another router's tracks stay.
func TestSilentRouterTracksEnd(t *testing.T) {
	_, r := bobsRouter(t)
	s := r.relaySub("c-1")
	now := time.Now()
	s.handle(appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, now.UnixNano(), &publisher{user: "alice", client: "alice-phone"}, rtpPacket(1)), now)
	s.handle(appendFrame(nil, kindPacket, codecOpus, 1, 98, 8, now.UnixNano(), &publisher{user: "carol", client: "carol-phone"}, rtpPacket(1)), now)
	if n := r.node.Stats().RemoteTracks; n != 2 {
		t.Fatalf("%d remote tracks, want 2", n)
	}

	r.node.interest.set("ghost", 99, false, []string{}, now, 300*time.Millisecond)
	if gone := r.node.interest.expire(now.Add(200 * time.Millisecond)); len(gone) != 0 {
		t.Fatalf("expired %v before three heartbeats", gone)
	}
	gone := r.node.interest.expire(now.Add(400 * time.Millisecond))
	if len(gone) != 1 || gone[0] != (goneRouter{"ghost", 99}) {
		t.Fatalf("expired %v, want the ghost and its origin", gone)
	}
	if n := s.endOrigin(gone[0].origin); n != 1 {
		t.Fatalf("ended %d tracks of the ghost, want 1", n)
	}
	if n := r.node.Stats().RemoteTracks; n != 1 {
		t.Fatalf("%d remote tracks after the ghost's ended, want carol's", n)
	}
	if s.tracks[8] == nil || s.tracks[8].t == nil {
		t.Fatal("carol's track (another router) ended too")
	}
}
