// Package stages holds the router's built-in pipeline stages: one file each.
//
//	permission-gate  packets of users outside any conversation go nowhere
//	forwarder        active speakers to the other members' slots (the SFU)
//	mixer            speakers that do not fit a device's slots, mixed on its last
//	bite-chunker     speech cut into self-contained Ogg Opus bites
//	nats-sink        bites published on NATS as Beep's protobuf
package stages

import "github.com/beepvoice/router/pipeline"

// Default is the default pipeline, in order.
var Default = []string{GateKind, ForwarderKind, MixerKind, ChunkerKind, NATSSinkKind}

// Register adds every built-in stage kind to r.
func Register(r *pipeline.Registry) {
	r.Register(gateKind)
	r.Register(forwarderKind)
	r.Register(mixerKind)
	r.Register(chunkerKind)
	r.Register(natsSinkKind)
}
