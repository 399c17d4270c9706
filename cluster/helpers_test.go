package cluster

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/stages"
)

// TestMain fails the package if a goroutine outlives the tests: every
// Node, Manager and NATS connection is closed in its test's cleanup.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// router is one router's parts as cmd/router wires them: a Node, a room
// Manager whose sink is the Node's wrap of the default pipeline, on its own
// NATS connection.
type router struct {
	tb    testing.TB
	node  *Node
	rooms *room.Manager
	pipe  *pipeline.Pipeline
	nc    *nats.Conn
}

// quiet is a logger for the parts under test.
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newRouter starts a router's parts on the NATS server at url and closes
// them, in cmd/router's order, at the end of the test.
func newRouter(t testing.TB, url string) *router {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	reg := pipeline.NewRegistry()
	stages.Register(reg)
	pc, err := reg.Config(stages.Default...)
	if err != nil {
		t.Fatal(err)
	}
	pipe, err := reg.Build(pc, pipeline.Env{NATS: nc, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	node, err := New(Config{NATS: nc, Logger: quiet(), Heartbeat: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	rooms, err := room.New(room.Config{
		Media:      rtc.Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}},
		Sink:       node.Sink(pipe),
		Membership: node,
		Changed:    node.Changed,
		Logger:     quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(rooms, pipe); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := rooms.Close(ctx); err != nil {
			t.Errorf("rooms: %v", err)
		}
		node.Close()
		if err := pipe.Close(ctx); err != nil {
			t.Errorf("pipeline: %v", err)
		}
		nc.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := node.waitOpen(ctx); err != nil {
		t.Fatal(err)
	}
	return &router{tb: t, node: node, rooms: rooms, pipe: pipe, nc: nc}
}

// bobsRouter returns a NATS server of its own and a router on it where bob
// is a member of conversation c-1: c-1 exists there, so its relayed frames
// are taken.
func bobsRouter(tb testing.TB) (*testutil.NATS, *router) {
	tb.Helper()
	ns := testutil.StartNATS(tb, testutil.JetStream)
	r := newRouter(tb, ns.URL())
	if err := r.rooms.Join("bob", "c-1"); err != nil {
		tb.Fatal(err)
	}
	return ns, r
}

// relaySub returns a subscription's handler of conversation conv's
// relayed frames on r, fed by the test (handle, onMsg) rather than by a
// NATS subscription; its remote tracks end at the end of the test.
func (r *router) relaySub(conv string) *relaySub {
	s := &relaySub{n: r.node, conv: conv, tracks: make(map[uint64]*remoteTrack)}
	r.tb.Cleanup(s.close0)
	return s
}

// nopSink is a pipeline that drops everything.
type nopSink struct{}

func (nopSink) Open(*room.Track) (rtc.TrackSink, error) { return nopTrack{}, nil }

type nopTrack struct{}

func (nopTrack) WriteRTP([]byte, time.Time) error { return nil }
func (nopTrack) Close()                           {}

// connect connects to the NATS server at url, closed at the end of the
// test.
func connect(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// stubRooms is a room layer with nobody in it.
type stubRooms struct{}

func (stubRooms) Apply(string, string) error          { return nil }
func (stubRooms) Listening() []string                 { return nil }
func (stubRooms) ConnectedMembers() map[string]string { return nil }
func (stubRooms) AddRemoteTrack(string, string, *rtc.UpTrack) (*room.Track, error) {
	return nil, room.ErrNoConversation
}
func (stubRooms) AddRemoteParticipantTrack(string, room.Identity, *rtc.UpTrack) (*room.Track, error) {
	return nil, room.ErrNoConversation
}
func (stubRooms) RemoveRemoteTrack(*room.Track)         {}
func (stubRooms) Deliver(string, room.Identity, []byte) {}

// watchRelay subscribes, on its own connection to url, to every relay
// subject, and returns the frames published there from now on.
func watchRelay(t testing.TB, url string) <-chan *nats.Msg {
	t.Helper()
	nc := connect(t, url)
	frames := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(DefaultPrefix+"relay.>", frames)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return frames
}
