package pipeline_test

import (
	"context"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// countStage counts the packets its processors see; it runs on local
// tracks only.
type countStage struct {
	n int
}

func (s *countStage) Open(*room.Track, pipeline.Emit) (pipeline.Processor, error) {
	return countProc{s}, nil
}
func (s *countStage) Close(context.Context) error { return nil }

type countProc struct{ s *countStage }

func (p countProc) HandlePacket(*pipeline.Packet) bool { p.s.n++; return true }
func (countProc) HandleBite(*pipeline.Bite)            {}
func (countProc) Close()                               {}

// relayedStage is a countStage that runs on relayed tracks.
type relayedStage struct{ countStage }

func (*relayedStage) Relayed() bool { return true }

// TestOpenRelayedSkipsLocalOnlyStages: a relayed track's chain has only
// the stages that implement pipeline.Relayed; a local track's has all.
func TestOpenRelayedSkipsLocalOnlyStages(t *testing.T) {
	fwd, bites := &relayedStage{}, &countStage{}
	p := pipeline.New(map[string]pipeline.Stage{"fwd": fwd, "bites": bites}, "fwd", "bites")
	tr := room.NewTrack(nil, rtc.NewUpTrack(claim.Claim{UserID: "u", ClientID: "d"}, 1, 0))
	pkt := []byte{0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xf8}
	relayed, err := p.OpenRelayed(tr)
	if err != nil {
		t.Fatal(err)
	}
	local, err := p.Open(tr)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []rtc.TrackSink{relayed, local} {
		if err := s.WriteRTP(pkt, time.Now()); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	if fwd.n != 2 || bites.n != 1 {
		t.Fatalf("relayed stage saw %d packets, local-only stage %d; want 2 and 1", fwd.n, bites.n)
	}
}
