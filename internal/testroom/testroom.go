// Package testroom starts the router's room layer for tests: a room
// Manager on the real default forwarding pipeline (permission gate,
// forwarder) with ICE on 127.0.0.1 only, as the front-ends' tests
// (signal/...) and room's own external tests drive it, alone or as one
// router of a cluster on a real NATS server.
//
// It imports room and cluster, so their internal tests cannot use it.
package testroom

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/cluster"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/stages"
)

// closeWithin bounds the closing of a Manager and its pipeline: generous,
// for -race on a busy machine of two cores.
const closeWithin = 20 * time.Second

// NewManager starts a Manager on the default forwarding pipeline, logging
// to log, with media as its media configuration but ICE on 127.0.0.1 only
// (media.ICEIPs is replaced). tb's cleanup closes the Manager, then the
// pipeline.
func NewManager(tb testing.TB, media rtc.Config, log *slog.Logger) *room.Manager {
	tb.Helper()
	return newManager(tb, media, log, "")
}

// NewClusterManager is NewManager for one router of a cluster on the NATS
// server at natsURL (JetStream on, for the membership bucket), wired as
// cmd/router wires it: the Manager's tracks are relayed to the other
// routers listening in their conversations, and theirs are relayed here.
// tb's cleanup closes the Manager, the cluster node, the pipeline, then
// the connection.
func NewClusterManager(tb testing.TB, natsURL string, log *slog.Logger) *room.Manager {
	tb.Helper()
	return newManager(tb, rtc.Config{}, log, natsURL)
}

// heartbeat is the cluster nodes' interest heartbeat: short, so that a
// test's routers learn of each other's interest quickly.
const heartbeat = 50 * time.Millisecond

func newManager(tb testing.TB, media rtc.Config, log *slog.Logger, natsURL string) *room.Manager {
	tb.Helper()
	reg := pipeline.NewRegistry()
	stages.Register(reg)
	cfg, err := reg.Config(stages.GateKind, stages.ForwarderKind)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := reg.Build(cfg, pipeline.Env{Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	media.ICEIPs = []net.IP{net.IPv4(127, 0, 0, 1)}
	rc := room.Config{Media: media, Sink: p, Mixing: p.Mixing(), Logger: log}
	var (
		nc   *nats.Conn
		node *cluster.Node
	)
	if natsURL != "" {
		if nc, err = nats.Connect(natsURL); err != nil {
			_ = p.Close(context.Background())
			tb.Fatal(err)
		}
		node, err = cluster.New(cluster.Config{NATS: nc, Logger: log, Heartbeat: heartbeat})
		if err != nil {
			nc.Close()
			_ = p.Close(context.Background())
			tb.Fatal(err)
		}
		rc.Sink, rc.Membership, rc.Messages, rc.Changed = node.Sink(p), node, node, node.Changed
	}
	m, err := room.New(rc)
	if err == nil && node != nil {
		err = node.Start(m, p)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeWithin)
		defer cancel()
		if m != nil {
			if err := m.Close(ctx); err != nil {
				tb.Errorf("close manager: %v", err)
			}
		}
		if node != nil {
			node.Close()
		}
		if err := p.Close(ctx); err != nil {
			tb.Errorf("close pipeline: %v", err)
		}
		if nc != nil {
			nc.Close()
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}
