package stages

import (
	"context"
	"sync/atomic"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// GateKind is the permission gate's kind name.
const GateKind = "permission-gate"

// GateSettings has nothing to set: membership is checked against
// backend-permissions when a user joins, and the gate enforces it.
type GateSettings struct{}

var gateKind = func() pipeline.Kind {
	k := pipeline.Define(GateKind,
		"drops the packets of users who are not members of a conversation; the first stage of every pipeline, no settings",
		GateSettings{},
		func(env pipeline.Env, name string, s *GateSettings) (pipeline.Stage, error) {
			return &Gate{}, nil
		})
	k.Gate = true
	return k
}()

// Gate resolves, on every packet, the conversation its publisher belongs to
// now, and stops packets of publishers who belong to none. Because the
// lookup happens per packet, a user who moves stops reaching the old
// conversation with the next packet.
type Gate struct {
	dropped atomic.Uint64
}

// Stats reports the packets the gate stopped.
func (g *Gate) Stats() map[string]uint64 {
	return map[string]uint64{"drop_not_member": g.dropped.Load()}
}

// Open returns the gate's processor for a track.
func (g *Gate) Open(*room.Track, pipeline.Emit) (pipeline.Processor, error) {
	return gateProc{g}, nil
}

// Close does nothing: the gate holds nothing.
func (g *Gate) Close(context.Context) error { return nil }

type gateProc struct{ g *Gate }

func (gp gateProc) HandlePacket(p *pipeline.Packet) bool {
	c := p.Track.Conversation()
	if c == nil {
		gp.g.dropped.Add(1)
		return false
	}
	p.Conversation = c
	return true
}

func (gateProc) HandleBite(*pipeline.Bite) {}
func (gateProc) Close()                    {}

// Relayed implements pipeline.Relayed: the gate also runs on tracks
// relayed from another router.
func (*Gate) Relayed() bool { return true }
