// Package testroom starts the router's room layer for tests: a room
// Manager on the real default forwarding pipeline (permission gate,
// forwarder) with ICE on 127.0.0.1 only, as the front-ends' tests
// (signal/...) and room's own external tests drive it.
//
// It imports room, so room's internal tests (package room) cannot use it.
package testroom

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

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
	m, err := room.New(room.Config{Media: media, Sink: p, Mixing: p.Mixing(), Logger: log})
	if err != nil {
		_ = p.Close(context.Background())
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeWithin)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			tb.Errorf("close manager: %v", err)
		}
		if err := p.Close(ctx); err != nil {
			tb.Errorf("close pipeline: %v", err)
		}
	})
	return m
}
