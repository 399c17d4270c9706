package pipeline

import (
	"bytes"
	"fmt"
	"log/slog"
	"reflect"
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
		if len(sc.Settings.Content) == 0 {
			sc.Settings = yaml.Node{} // a kind without settings: no "settings: {}"
		}
		c.Stages = append(c.Stages, sc)
	}
	return c, nil
}

// Settings returns the settings of stage sc: its kind's defaults with the
// stage's settings decoded over them, unknown keys refused. It is what
// Build gives the kind's New.
func (r *Registry) Settings(sc StageConfig) (any, error) {
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
	return settings, nil
}

// Commented renders c as a YAML file documented for its reader: header
// (when not empty) as its first comment, each stage under a comment that
// names it and says what its kind does (Kind.Doc), and each setting under
// its own comment: the doc tag of its field in the kind's settings struct
// (`yaml:"silence" doc:"this much silence ends a bite"`), so that a setting
// is described once, where its default is defined. Comments do not change
// the configuration: parsing the result gives c back.
func (r *Registry) Commented(c *Config, header string) ([]byte, error) {
	var root yaml.Node
	if err := root.Encode(c); err != nil {
		return nil, err
	}
	seq := mappingValue(&root, "stages")
	if seq == nil || len(seq.Content) != len(c.Stages) {
		return nil, fmt.Errorf("pipeline config: no stages")
	}
	for i, item := range seq.Content {
		sc := c.Stages[i]
		k, ok := r.kinds[sc.kind()]
		if !ok {
			return nil, fmt.Errorf("stage %q: unknown kind %q", sc.Name, sc.kind())
		}
		item.HeadComment = wrap(sc.Name+": "+k.Doc, commentWidth)
		settings := mappingValue(item, "settings")
		if settings == nil || settings.Kind != yaml.MappingNode {
			continue
		}
		docs := settingDocs(k.Defaults())
		for j := 0; j+1 < len(settings.Content); j += 2 {
			settings.Content[j].HeadComment = wrap(docs[settings.Content[j].Value], commentWidth)
			delete(docs, settings.Content[j].Value)
		}
		// Settings left out (empty, omitempty) are described after the
		// others, so that every setting of the kind is documented.
		var unset []string
		for _, key := range settingKeys(k.Defaults()) {
			if d, ok := docs[key]; ok {
				unset = append(unset, wrap(key+" (not set): "+d, commentWidth))
			}
		}
		if len(unset) > 0 && len(settings.Content) > 0 {
			settings.Content[len(settings.Content)-2].FootComment = strings.Join(unset, "\n")
		}
	}
	doc := &yaml.Node{Kind: yaml.DocumentNode, HeadComment: header, Content: []*yaml.Node{&root}}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Undocumented lists what Commented could not explain: each kind without a
// Doc, and each setting (kind.setting) without a doc tag. Tests keep it
// empty.
func (r *Registry) Undocumented() []string {
	var missing []string
	for _, name := range r.Kinds() {
		k := r.kinds[name]
		if k.Doc == "" {
			missing = append(missing, name)
		}
		t := reflect.TypeOf(k.Defaults())
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			continue
		}
		docs := settingDocs(k.Defaults())
		for i := range t.NumField() {
			if key := yamlKey(t.Field(i)); key != "" && docs[key] == "" {
				missing = append(missing, name+"."+key)
			}
		}
	}
	return missing
}

// settingKeys returns the setting keys of a settings struct (or pointer to
// one) in field order.
func settingKeys(settings any) []string {
	t := reflect.TypeOf(settings)
	if t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return nil
	}
	var keys []string
	for i := range t.NumField() {
		if key := yamlKey(t.Field(i)); key != "" {
			keys = append(keys, key)
		}
	}
	return keys
}

// settingDocs maps each setting key of a settings struct (or pointer to
// one) to its field's doc tag.
func settingDocs(settings any) map[string]string {
	docs := make(map[string]string)
	t := reflect.TypeOf(settings)
	if t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() != reflect.Struct {
		return docs
	}
	for i := range t.NumField() {
		if key := yamlKey(t.Field(i)); key != "" {
			docs[key] = t.Field(i).Tag.Get("doc")
		}
	}
	return docs
}

// yamlKey returns the key under which yaml writes field f, "" for none.
func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name) // yaml's default key
	}
	return name
}

// commentWidth is the longest line of a comment Commented writes, not
// counting its indentation and "# ".
const commentWidth = 68

// wrap breaks s into lines of at most width characters at spaces (a longer
// word stays whole).
func wrap(s string, width int) string {
	var b strings.Builder
	n := 0
	for _, w := range strings.Fields(s) {
		switch {
		case n == 0:
		case n+1+len(w) > width:
			b.WriteByte('\n')
			n = 0
		default:
			b.WriteByte(' ')
			n++
		}
		b.WriteString(w)
		n += len(w)
	}
	return b.String()
}

// mappingValue returns the value of key in mapping node n, nil if absent.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
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
	settings, err := r.Settings(sc)
	if err != nil {
		return nil, err
	}
	k := r.kinds[sc.kind()]
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
