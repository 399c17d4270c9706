package main

import (
	"context"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testutil"
)

// startTwoRouters builds the router and runs two processes of it, A and
// B, in one cluster on a NATS server with JetStream started by the test;
// env is added to both. It returns them and the NATS server's URL.
func startTwoRouters(t *testing.T, env map[string]string) (a, b *routerProcess, natsURL string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs two router processes")
	}
	bin := buildRouter(t)
	ns := testutil.StartNATS(t, testutil.JetStream)
	vars := map[string]string{"NATS": ns.URL(), "CLUSTER_HEARTBEAT": "100ms"}
	for k, v := range env {
		vars[k] = v
	}
	return startRouterProcess(t, bin, "router A", vars), startRouterProcess(t, bin, "router B", vars), ns.URL()
}

// listenedTo waits until sp received at least n packets of from's, and
// fails the test if any packet it received was another's or if the stream
// skipped more than a few sequence numbers (UDP may lose one, even on
// loopback; the relay must not).
func listenedTo(t *testing.T, what string, sp, from *sylkSpeaker, n int, since time.Time) {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, what, func() bool {
		got, _, _, _ := sp.received(from)
		return got >= n
	})
	got, others, missing, first := sp.received(from)
	if others != 0 {
		t.Errorf("%s: %d packets not the publisher's (and %d of the publisher's)", what, others, got)
	}
	if missing > n/50 {
		t.Errorf("%s: %d sequence numbers missing between the %d packets received", what, missing, got)
	}
	t.Logf("%s: %d packets, %d sequence numbers missing between them, the first %v after the join", what, got, missing, first.Sub(since).Round(time.Millisecond))
}

// TestSylkVideoRoomTwoRouterProcesses: two router processes in a cluster;
// alice's Sylk socket on router A joins a video room and publishes Opus
// with the audio level extension, bob's on router B joins the same room.
// Bob is told of alice as a publisher, attaches her feed on B and
// receives her audio through the relay, a continuous stream of packets all
// hers. Her bite is published once, by A, never again by B. When alice's
// socket closes on A, bob is told on B (publishers-left).
func TestSylkVideoRoomTwoRouterProcesses(t *testing.T) {
	const alice, bob, room = "alice@example.com", "bob@example.com", "standup@conference.example.com"
	a, b, natsURL := startTwoRouters(t, map[string]string{"SYLK_ACCOUNTS": sylkAccounts(t, alice, bob)})
	bites := watchBites(t, natsURL)
	ctx := deadline(t, 60*time.Second)

	join := func(r *routerProcess, aor string, sp *sylkSpeaker) (*sylkClient, string) {
		t.Helper()
		c := dialSylk(t, r.addr)
		c.login(aor)
		session := "conf-" + aor
		c.ack("videoroom-join", map[string]any{"account": aor, "session": session, "uri": room,
			"sdp": sp.offer(webrtc.RTPTransceiverDirectionSendonly), "audio": true, "video": false})
		acc := c.wait(func(m map[string]any) bool {
			return m["sylkrtc"] == "videoroom-event" && m["session"] == session && m["event"] == "session-state" && m["state"] == "accepted"
		}, aor+" accepted")
		sp.apply(acc["sdp"].(string))
		return c, session
	}
	event := func(session, name string) func(map[string]any) bool {
		return func(m map[string]any) bool {
			return m["sylkrtc"] == "videoroom-event" && m["session"] == session && m["event"] == name
		}
	}

	// Alice speaks once (one bite), then sends silence until she leaves:
	// a continuous stream for bob.
	aliceSp := newSpeaker(t)
	aliceSp.payload = []byte{0xf8, 0xff, 0xfe, 'a'}
	aliceC, _ := join(a, alice, aliceSp)
	talkCtx, stop := context.WithCancel(ctx)
	talked := make(chan error, 1)
	go func() { talked <- aliceSp.talk(talkCtx, 50, -1) }()
	t.Cleanup(stop)

	joined := time.Now()
	bobC, bobSession := join(b, bob, newSpeaker(t))
	// Alice is in initial-publishers if her tracks reached B before bob
	// joined, else in a publishers-joined.
	var aliceID string
	for aliceID == "" {
		m := bobC.wait(func(m map[string]any) bool {
			return event(bobSession, "initial-publishers")(m) || event(bobSession, "publishers-joined")(m)
		}, "bob told of publishers")
		list, _ := m["publishers"].([]any)
		for _, p := range list {
			if e, _ := p.(map[string]any); e["uri"] == alice {
				aliceID, _ = e["id"].(string)
			}
		}
	}
	if got := b.metric("router_relay_remote_tracks"); got < 1 {
		t.Errorf("router B holds %v remote tracks while alice publishes on A, want ≥ 1", got)
	}

	const feed = "feed-bob-alice"
	bobC.ack("videoroom-feed-attach", map[string]any{"session": bobSession, "publisher": aliceID, "feed": feed})
	attached := bobC.wait(func(m map[string]any) bool { return event(bobSession, "feed-attached")(m) && m["feed"] == feed }, "feed-attached")
	offer, _ := attached["sdp"].(string)
	if offer == "" {
		t.Fatalf("feed-attached without an SDP offer: %v", attached)
	}
	listener := newSpeaker(t)
	bobC.ack("videoroom-feed-answer", map[string]any{"session": bobSession, "feed": feed, "sdp": listener.listen(offer)})
	listenedTo(t, "bob on B ← alice on A", listener, aliceSp, 100, joined)

	if in := b.metric("router_relay_packets_total", `direction="in"`); in < 100 {
		t.Errorf("router B received %v relayed packets, want at least the 100 bob heard", in)
	}
	bites.checkOnce(1, a, b)
	if bb := b.metric("router_stage_events_total", `event="bites"`, `stage="bite-chunker"`); bb != 0 {
		t.Errorf("router B made %v bites of alice's relayed audio, want none", bb)
	}

	// Alice's socket closes on A: bob is told on B.
	stop()
	if err := <-talked; err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	_ = aliceC.ws.Close()
	m := bobC.wait(event(bobSession, "publishers-left"), "bob told alice left")
	if ids, _ := m["publishers"].([]any); len(ids) != 1 || ids[0] != aliceID {
		t.Errorf("bob: publishers-left %v, want [%q]", m["publishers"], aliceID)
	}
	t.Logf("bob told on B %v after alice's socket closed on A", time.Since(left).Round(time.Millisecond))
}

// TestArbiterRoomTwoRouterProcesses: two router processes in a cluster;
// an Arbiter room made and claimed through router A's API; participant 0
// on router A's gateway, participant 1 on router B's. Each produces audio
// and gets a consumer of the other carrying the other's audio, every
// packet the other's, through the relay. When participant 0's socket
// closes on A, participant 1 is told on B (clientDisconnect).
func TestArbiterRoomTwoRouterProcesses(t *testing.T) {
	a, b, _ := startTwoRouters(t, nil)
	ctx := deadline(t, 60*time.Second)
	roomID := arbiterRoom(t, a.addr, "/across")
	ids := []string{"ada", "bo"}

	joined := time.Now()
	cs := []*arbiterClient{
		dialArbiter(t, ctx, a.addr, roomID, ids[0], ids[1]),
		dialArbiter(t, ctx, b.addr, roomID, ids[1], ids[0]),
	}
	cs[0].sp.payload = []byte{0xf8, 0xff, 0xfe, 0}
	cs[1].sp.payload = []byte{0xf8, 0xff, 0xfe, 1}
	talkCtx, stop := context.WithCancel(ctx)
	t.Cleanup(stop)
	talked := make(chan error, len(cs))
	for _, c := range cs {
		go func() { talked <- c.sp.talk(talkCtx, 50, -1) }()
	}

	for i, c := range cs {
		listenedTo(t, c.id+" on "+[]string{"A", "B"}[i]+" ← "+ids[1-i], c.consumer, cs[1-i].sp, 100, joined)
	}
	for _, r := range []*routerProcess{a, b} {
		if got := r.metric("router_relay_remote_tracks"); got < 1 {
			t.Errorf("%s holds %v remote tracks, want ≥ 1 (the other router's participant)", r.name, got)
		}
	}

	stop()
	for range cs {
		if err := <-talked; err != nil {
			t.Fatal(err)
		}
	}
	left := time.Now()
	_ = cs[0].ws.Close()
	testutil.Eventually(t, 15*time.Second, "bo on B told that ada left A", func() bool {
		return !cs[1].told(ids[0]).IsZero()
	})
	t.Logf("bo told on B %v after ada's socket closed on A", cs[1].told(ids[0]).Sub(left).Round(time.Millisecond))
}
