package stages

import (
	"strings"
	"testing"

	"github.com/beepvoice/router/pipeline"
)

// TestPipelineNeedsTheGateFirst: a pipeline through which a packet could
// reach a stage before the permission gate is refused at start, with a
// message that says so.
func TestPipelineNeedsTheGateFirst(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string // "" for a pipeline that builds
	}{
		{"gate first", "stages:\n  - name: permission-gate\n  - name: forwarder\n", ""},
		{"forwarder before the gate", "stages:\n  - name: forwarder\n  - name: permission-gate\n", `stage "forwarder" comes before the gate "permission-gate"`},
		{"no gate", "stages:\n  - name: forwarder\n", "pipeline has no gate: its first stage must be a permission-gate"},
		{"renamed gate first", "stages:\n  - name: members-only\n    kind: permission-gate\n  - name: forwarder\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := pipeline.NewRegistry()
			Register(reg)
			cfg, err := pipeline.ParseConfig(strings.NewReader(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			p, err := reg.Build(cfg, pipeline.Env{})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
			if p != nil {
				if err := p.Close(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
