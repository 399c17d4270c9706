// Command recorder is a Beep router plugin that records each participant's
// audio in each conversation to Ogg Opus files, cut into segments of a set
// duration, each with a JSON sidecar. It publishes each finished segment's
// paths as a result (kind "recording").
//
// Files are laid out as
//
//	<dir>/<conversation>/<user>/<start>-<client>-<ssrc>.opus
//	<dir>/<conversation>/<user>/<start>-<client>-<ssrc>.json
//
// with <start> the UTC arrival time of the segment's first packet
// (20060102T150405.000Z). A segment is written as <name>.opus.part and
// renamed when complete, so that a file with the .opus name is always whole.
//
// Flags (the stage's config keys of the same names override them):
//
//	-dir      directory to record into (default ".")
//	-segment  segment duration (default 5m)
//	-subject  NATS subject for results (default: the host's plugin.<stage>)
package main

import (
	"flag"
	"time"

	"github.com/beepvoice/router/plugins/sdk"
)

func main() {
	var o options
	flag.StringVar(&o.Dir, "dir", ".", "directory to record into")
	segment := flag.Duration("segment", 5*time.Minute, "segment duration")
	flag.StringVar(&o.Subject, "subject", "", "NATS subject for results")
	flag.Parse()
	o.Segment = segment.String()
	r := newRecorder(o)
	sdk.Serve(sdk.Plugin{
		Name:      "recorder/1.0",
		Configure: r.configure,
		Packet:    r.packet,
		StreamEnd: r.streamEnd,
		Stop:      r.stop,
	})
}
