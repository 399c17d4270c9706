// Package pipeline is the stage model every RTP packet passes through.
//
// The data path of the router is
//
//	socket → session (track reader) → pipeline.Chain → stages → subscribers / NATS / plugins
//
// A Pipeline is an ordered list of Stages built from a Config (YAML) by a
// Registry of stage kinds. For each published track the Pipeline opens a
// Chain: one Processor per stage, owned by that track's reader goroutine, so
// per-track state needs no lock and no lookup. Packets flow through the
// processors in order; a processor may stop a packet (returning false) or
// emit a Bite, which flows on to the processors after it.
package pipeline
