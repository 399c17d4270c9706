package pipeline

import (
	"context"

	"github.com/beepvoice/router/room"
)

// Stage is one step of the pipeline. A Stage is shared by all tracks; its
// per-track state lives in the Processors it opens.
type Stage interface {
	// Open returns the stage's processor for one published track. emit
	// passes a Bite to the stages after this one; it may be called only from
	// the processor's own methods (the track's goroutine).
	Open(t *room.Track, emit Emit) (Processor, error)
	// Close stops the stage once every track is closed, flushing what it
	// holds (queued bites, open files) until ctx ends.
	Close(ctx context.Context) error
}

// Emit passes a bite to the following stages of a track's chain.
type Emit func(b *Bite)

// Processor is a stage's handler for one track. Its methods are called from
// one goroutine, in packet order, so it needs no locking of its own state.
type Processor interface {
	// HandlePacket processes one packet. Returning false stops the packet:
	// later stages do not see it.
	HandlePacket(p *Packet) bool
	// HandleBite processes a bite emitted by an earlier stage.
	HandleBite(b *Bite)
	// Close is called once when the track ends, after its last packet.
	Close()
}

// Nop is a Processor that passes everything through. Embed it to implement
// only the methods a stage cares about.
type Nop struct{}

// HandlePacket passes the packet on.
func (Nop) HandlePacket(*Packet) bool { return true }

// HandleBite ignores the bite.
func (Nop) HandleBite(*Bite) {}

// Close does nothing.
func (Nop) Close() {}

// Stats is implemented by stages that count what they do. Each key names an
// event ("forwarded", "drop_queue_full"); values only grow. The router
// exports them as metrics; reading them must not disturb the packet path.
type Stats interface {
	Stats() map[string]uint64
}

// Relayed is implemented by the stages that also run on tracks relayed
// from another router of a cluster (Pipeline.OpenRelayed): those that
// deliver to this router's own listeners (the gate, the forwarder). Stages
// that make something once per publisher (bites, recordings) do not
// implement it: they run only where the publisher is connected.
type Relayed interface {
	Relayed() bool
}
