package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the pipeline file: the stages in order, with their settings.
//
//	stages:
//	  - name: permission-gate
//	  - name: bite-chunker
//	    settings:
//	      max_duration: 5s
type Config struct {
	Stages []StageConfig `yaml:"stages"`
}

// StageConfig configures one stage.
type StageConfig struct {
	// Name identifies the stage in logs and metrics; unique in a pipeline.
	Name string `yaml:"name"`
	// Kind selects the stage implementation from the Registry; it defaults
	// to Name, so that built-in stages need only a name.
	Kind string `yaml:"kind,omitempty"`
	// Settings are the kind's own settings; unknown keys are an error.
	Settings yaml.Node `yaml:"settings,omitempty"`
}

// kind returns the stage's kind, defaulting to its name.
func (s *StageConfig) kind() string {
	if s.Kind != "" {
		return s.Kind
	}
	return s.Name
}

// ParseConfig reads a pipeline file. Unknown fields are errors, so that a
// misspelt setting stops the router at start rather than being ignored.
func ParseConfig(r io.Reader) (*Config, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("pipeline config is empty")
		}
		return nil, fmt.Errorf("pipeline config: %w", err)
	}
	if len(c.Stages) == 0 {
		return nil, errors.New("pipeline config: no stages")
	}
	seen := make(map[string]bool, len(c.Stages))
	for i, s := range c.Stages {
		if s.Name == "" {
			return nil, fmt.Errorf("pipeline config: stage %d has no name", i+1)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("pipeline config: stage name %q used twice", s.Name)
		}
		seen[s.Name] = true
	}
	return &c, nil
}

// Marshal renders c as YAML.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Duration is a time.Duration that reads and writes YAML as "500ms".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalYAML writes d in time.Duration's string form.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// UnmarshalYAML reads a duration such as "1.5s" or "500ms".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	if v < 0 {
		return fmt.Errorf("line %d: negative duration %s", n.Line, s)
	}
	*d = Duration(v)
	return nil
}
