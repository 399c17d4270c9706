package pipeline

import (
	"bytes"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// Env is what stages may use from the rest of the router.
type Env struct {
	// NATS is the connection bites and events are published on.
	NATS *nats.Conn
	// Logger is the router's logger; stages add their own name to it.
	Logger *slog.Logger
	// Metrics registers a stage's own Prometheus collectors (histograms);
	// nil means none. Counters are better exposed through Stats.
	Metrics prometheus.Registerer
}

// Kind is a stage implementation that a Config can name.
type Kind struct {
	// Name is what a Config's kind (or name) field selects.
	Name string
	// Doc says in one line what the stage does.
	Doc string
	// Defaults returns a pointer to a settings struct holding the defaults.
	// The Config's settings are decoded over it.
	Defaults func() any
	// New builds the stage from settings (the value Defaults returned,
	// decoded over). name is the stage's name in the Config.
	New func(env Env, name string, settings any) (Stage, error)
	// Gate marks the kind that admits packets: it decides, from the
	// publisher's membership, the conversation a packet is for, and stops
	// the packets of publishers who have none. Where a Registry has a gate
	// kind, every pipeline must start with a stage of it.
	Gate bool
}

// Define is a typed helper for writing a Kind with settings type S.
func Define[S any](name, doc string, defaults S, build func(env Env, name string, s *S) (Stage, error)) Kind {
	return Kind{
		Name: name,
		Doc:  doc,
		Defaults: func() any {
			s := defaults
			return &s
		},
		New: func(env Env, stageName string, settings any) (Stage, error) {
			return build(env, stageName, settings.(*S))
		},
	}
}

// Registry holds the stage kinds a Config may use.
type Registry struct {
	kinds map[string]Kind
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry { return &Registry{kinds: make(map[string]Kind)} }

// Register adds a kind. Registering a name twice is a programming error and
// panics.
func (r *Registry) Register(k Kind) {
	if k.Name == "" || k.New == nil || k.Defaults == nil {
		panic("pipeline: Register of an incomplete kind")
	}
	if _, dup := r.kinds[k.Name]; dup {
		panic("pipeline: Register called twice for kind " + k.Name)
	}
	r.kinds[k.Name] = k
}

// Kinds returns the registered kind names, sorted.
func (r *Registry) Kinds() []string {
	names := make([]string, 0, len(r.kinds))
	for n := range r.kinds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Config returns a Config of the named kinds, in order, with each kind's
// default settings written out (what -print-pipeline shows).
func (r *Registry) Config(kinds ...string) (*Config, error) {
	c := &Config{}
	for _, name := range kinds {
		k, ok := r.kinds[name]
		if !ok {
			return nil, fmt.Errorf("unknown stage kind %q", name)
		}
		sc := StageConfig{Name: name}
		if err := sc.Settings.Encode(k.Defaults()); err != nil {
			return nil, fmt.Errorf("stage %s: encode defaults: %w", name, err)
		}
		c.Stages = append(c.Stages, sc)
	}
	return c, nil
}

// Build creates the stages of c. On error, the stages built so far are
// closed and the error names the stage at fault.
func (r *Registry) Build(c *Config, env Env) (*Pipeline, error) {
	if err := r.checkGate(c); err != nil {
		return nil, err
	}
	p := &Pipeline{}
	for _, sc := range c.Stages {
		st, err := r.build(sc, env)
		if err != nil {
			p.closeStages()
			return nil, fmt.Errorf("pipeline stage %q: %w", sc.Name, err)
		}
		p.stages = append(p.stages, named{name: sc.Name, stage: st})
	}
	if env.Metrics != nil {
		timing := prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "router_stage_packet_seconds",
			Help:    "Time one packet spends in a stage, sampled on one packet in 1024.",
			Buckets: prometheus.ExponentialBuckets(50e-9, 2, 16),
		}, []string{"stage"})
		if err := env.Metrics.Register(timing); err != nil {
			p.closeStages()
			return nil, fmt.Errorf("pipeline metrics: %w", err)
		}
		for i := range p.stages {
			p.stages[i].timing = timing.WithLabelValues(p.stages[i].name)
		}
	}
	return p, nil
}

// checkGate refuses a pipeline some packets could pass through unchecked:
// where r has a gate kind, c must start with a stage of it.
func (r *Registry) checkGate(c *Config) error {
	var gates []string
	for _, k := range r.kinds {
		if k.Gate {
			gates = append(gates, k.Name)
		}
	}
	if len(gates) == 0 || len(c.Stages) == 0 {
		return nil
	}
	sort.Strings(gates)
	for i, sc := range c.Stages {
		if k, ok := r.kinds[sc.kind()]; ok && k.Gate {
			if i > 0 {
				return fmt.Errorf("pipeline stage %q comes before the gate %q: every packet must pass a %s first", c.Stages[0].Name, sc.Name, strings.Join(gates, " or "))
			}
			return nil
		}
	}
	return fmt.Errorf("pipeline has no gate: its first stage must be a %s, or packets of users outside any conversation would be forwarded", strings.Join(gates, " or "))
}

func (r *Registry) build(sc StageConfig, env Env) (Stage, error) {
	k, ok := r.kinds[sc.kind()]
	if !ok {
		return nil, fmt.Errorf("unknown kind %q (known: %v)", sc.kind(), r.Kinds())
	}
	settings := k.Defaults()
	if !sc.Settings.IsZero() {
		if err := decodeStrict(&sc.Settings, settings); err != nil {
			return nil, fmt.Errorf("settings: %w", err)
		}
	}
	if env.Logger == nil {
		env.Logger = slog.Default()
	}
	env.Logger = env.Logger.With("stage", sc.Name)
	return k.New(env, sc.Name, settings)
}

// decodeStrict decodes n into v, refusing keys v does not have. yaml.Node's
// own Decode ignores unknown keys, so round-trip through a strict decoder.
func decodeStrict(n *yaml.Node, v any) error {
	b, err := yaml.Marshal(n)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}
