package arbiter

import (
	"slices"
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
)

// TestCallAcrossRouters: two routers of a cluster share one NATS (the
// room store and the media relay); participant 0 joins the room on router
// A, participant 1 on router B. Each gets a consumer of the other carrying
// the other's VP8 (decodable, of the other's size) and Opus (every packet
// one the other sent), through the relay, and the other's features; chat
// and features changes reach the other router's participant. When
// participant 0's socket closes on A, participant 1 is told on B.
func TestCallAcrossRouters(t *testing.T) {
	ns := startJetStream(t, "")
	onCluster := func() Config {
		return Config{Rooms: testroom.NewClusterManager(t, ns.URL(), testLog(t))}
	}
	a := newRouter(t, testutil.ConnectNATS(t, ns.URL()), onCluster())
	b := newRouter(t, testutil.ConnectNATS(t, ns.URL()), onCluster())
	a.createRoom(t)
	roomID := a.claim(t, "/across")
	ctx := deadline(t, waitLong)
	ids := []string{"3f2c6a52-0b1d-4a8e-9a43-1d9c2f0e7a01", "7b9e1c44-5d2a-4f6b-8c1e-2a3b4c5d6e02"}
	cs := []*client{join(t, a, ids[0], roomID, mediaFor(t, 0)), join(t, b, ids[1], roomID, mediaFor(t, 1))}

	waitConsumers(t, ctx, cs, ids)
	for i, c := range cs {
		other := ids[1-i]
		checkConsumer(t, c, other, c.snap().consumers[other], mediaFor(t, 1-i))
	}

	// Chat and features cross the routers too, each to the other only.
	msg := `{"id":"m1","sender":"self","content":"hello from A"}`
	if err := testutil.Until(ctx, func() bool { return cs[0].chat.ReadyState() == webrtc.DataChannelStateOpen }); err != nil {
		t.Fatal("the chat channel did not open")
	}
	if err := cs[0].chat.SendText(msg); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Until(ctx, func() bool { return slices.Equal(cs[1].snap().chats, []string{msg}) }); err != nil {
		t.Errorf("chat not relayed from A to B: %q", cs[1].snap().chats)
	}
	if err := cs[1].features.SendText(`{"id":"whoever","features":{"audio":false,"video":true}}`); err != nil {
		t.Fatal(err)
	}
	muted := features{Audio: false, Video: true}
	if err := testutil.Until(ctx, func() bool { return cs[0].snap().feats[ids[1]] == muted }); err != nil {
		t.Errorf("features not relayed from B to A as the sender's: %v", cs[0].snap().feats)
	}
	if got := cs[0].snap().chats; len(got) != 0 {
		t.Errorf("chat echoed to its sender: %q", got)
	}

	cs[0].leave()
	if err := testutil.Until(ctx, func() bool { _, ok := cs[1].snap().disconnects[ids[0]]; return ok }); err != nil {
		t.Fatalf("participant 1 on B not told that participant 0 left A: %v", err)
	}
}
