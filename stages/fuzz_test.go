package stages

import (
	"context"
	"strings"
	"testing"

	"github.com/beepvoice/router/pipeline"
)

// FuzzPipelineConfig feeds arbitrary pipeline files through parsing and
// building with the built-in stages: errors are fine, panics are not.
func FuzzPipelineConfig(f *testing.F) {
	reg := pipeline.NewRegistry()
	Register(reg)
	def, _ := reg.Config(Default...)
	b, _ := def.Marshal()
	f.Add(string(b))
	f.Add("stages:\n  - name: bite-chunker\n    settings: {format: rtp, silence: 1ms}\n")
	f.Add("stages:\n  - name: forwarder\n    settings: {hangover: -1s}\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := pipeline.ParseConfig(strings.NewReader(s))
		if err != nil {
			return
		}
		// No NATS: a nats-sink stage must refuse to build, not panic.
		p, err := reg.Build(c, pipeline.Env{})
		if err == nil {
			_ = p.Close(context.Background())
		}
	})
}
