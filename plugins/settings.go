package plugins

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/beepvoice/router/pipeline"
)

// Kind is the stage kind name of plugins.
const Kind = "plugin"

// Settings configure one plugin stage. Each field's doc tag is its
// documentation, the comment router -print-pipeline writes above it.
type Settings struct {
	Path           string            `yaml:"path" doc:"the plugin program (required): an executable file, absolute or relative to the router's working directory"`
	Args           []string          `yaml:"args,omitempty" doc:"its command line arguments"`
	Env            []string          `yaml:"env,omitempty" doc:"extra environment variables of the plugin, each \"NAME=value\""`
	Config         map[string]any    `yaml:"config,omitempty" doc:"passed to the plugin as JSON in its Configure call; the SDK refuses unknown keys"`
	Conversations  []string          `yaml:"conversations" doc:"glob patterns (path.Match) of the conversation ids the plugin sees; [\"*\"]: all"`
	Subjects       []string          `yaml:"subjects,omitempty" doc:"NATS subjects (wildcards allowed) the plugin's results may be published on; none: plugin.<name> and plugin.<name>.>"`
	Queue          int               `yaml:"queue" doc:"packets and bites that may wait for the plugin; more are dropped and counted"`
	Batch          int               `yaml:"batch" doc:"most packets and bites in one stream message (1 to 4096)"`
	Flush          pipeline.Duration `yaml:"flush" doc:"longest a packet waits for its batch to fill (at most 1s); 0s sends what is queued at once"`
	StartTimeout   pipeline.Duration `yaml:"start_timeout" doc:"longest start of the plugin: launch, handshake and Configure"`
	HealthInterval pipeline.Duration `yaml:"health_interval" doc:"how often the plugin is health-checked"`
	StallTimeout   pipeline.Duration `yaml:"stall_timeout" doc:"a plugin that leaves a send blocked, or a health check unanswered, this long is hung: it is killed and restarted"`
	Backoff        pipeline.Duration `yaml:"backoff" doc:"delay before the first restart; it doubles with each consecutive failure, up to max_backoff"`
	MaxBackoff     pipeline.Duration `yaml:"max_backoff" doc:"longest delay between two restarts"`
	MaxRestarts    int               `yaml:"max_restarts" doc:"consecutive failures after which the plugin is disabled (the router goes on without it)"`
	StableAfter    pipeline.Duration `yaml:"stable_after" doc:"a plugin that ran this long counts as recovered: its failures are forgotten"`
	StopTimeout    pipeline.Duration `yaml:"stop_timeout" doc:"at shutdown, how long the plugin may finish its work before it is killed"`
	MaxResultSize  int               `yaml:"max_result_size" doc:"largest data of one result, in bytes"`
}

// DefaultSettings are the settings a plugin stage starts from.
var DefaultSettings = Settings{
	Conversations:  []string{"*"},
	Queue:          1024,
	Batch:          32,
	Flush:          pipeline.Duration(5 * time.Millisecond),
	StartTimeout:   pipeline.Duration(10 * time.Second),
	HealthInterval: pipeline.Duration(5 * time.Second),
	StallTimeout:   pipeline.Duration(10 * time.Second),
	Backoff:        pipeline.Duration(time.Second),
	MaxBackoff:     pipeline.Duration(time.Minute),
	MaxRestarts:    5,
	StableAfter:    pipeline.Duration(time.Minute),
	StopTimeout:    pipeline.Duration(10 * time.Second),
	MaxResultSize:  1 << 20,
}

// maxBatch bounds Batch: bigger batches add latency and gain nothing.
const maxBatch = 4096

// Register adds the plugin stage kind to r.
func Register(r *pipeline.Registry) {
	r.Register(pipeline.Define(Kind,
		"runs an out-of-process plugin (hashicorp/go-plugin over gRPC) on packets and/or bites",
		DefaultSettings,
		func(env pipeline.Env, name string, s *Settings) (pipeline.Stage, error) {
			return New(env, name, *s)
		}))
}

// validate checks s and returns the config as JSON.
func (s *Settings) validate() (configJSON []byte, err error) {
	switch {
	case s.Path == "":
		return nil, errors.New("path is empty")
	case s.Queue <= 0:
		return nil, errors.New("queue must be positive")
	case s.Batch <= 0 || s.Batch > maxBatch:
		return nil, fmt.Errorf("batch must be between 1 and %d", maxBatch)
	case s.Flush.D() > time.Second:
		return nil, errors.New("flush must be at most 1s")
	case s.StartTimeout <= 0 || s.HealthInterval <= 0 || s.StallTimeout <= 0 || s.StopTimeout <= 0:
		return nil, errors.New("start_timeout, health_interval, stall_timeout and stop_timeout must be positive")
	case s.Backoff <= 0 || s.MaxBackoff < s.Backoff:
		return nil, errors.New("backoff must be positive and at most max_backoff")
	case s.MaxRestarts < 0:
		return nil, errors.New("max_restarts must not be negative")
	case s.MaxResultSize <= 0:
		return nil, errors.New("max_result_size must be positive")
	case len(s.Conversations) == 0:
		return nil, errors.New(`conversations is empty: the plugin would see nothing (use ["*"] for all)`)
	}
	fi, err := os.Stat(s.Path)
	if err != nil {
		return nil, fmt.Errorf("path: %w", err)
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("path %s: not an executable file", s.Path)
	}
	for _, p := range s.Conversations {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("conversations: pattern %q: %w", p, err)
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, fmt.Errorf("env: %q is not NAME=value", e)
		}
	}
	for _, sub := range s.Subjects {
		if !validSubject(sub, true) {
			return nil, fmt.Errorf("subjects: %q is not a NATS subject", sub)
		}
	}
	cfg := s.Config
	if cfg == nil {
		cfg = map[string]any{}
	}
	configJSON, err = json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return configJSON, nil
}

// matchConversation reports whether conversation id matches one of patterns.
func matchConversation(patterns []string, id string) bool {
	for _, p := range patterns {
		if p == "*" {
			return true
		}
		if ok, _ := path.Match(p, id); ok {
			return true
		}
	}
	return false
}

// validSubject reports whether s is a NATS subject; with wildcards, '*' and
// a final '>' are allowed as whole tokens.
func validSubject(s string, wildcards bool) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		if t == "" {
			return false
		}
		if wildcards && (t == "*" || t == ">" && i == len(tokens)-1) {
			continue
		}
		for _, c := range t {
			if c <= ' ' || c == '*' || c == '>' || c == 0x7f {
				return false
			}
		}
	}
	return true
}

// subjectMatches reports whether subject matches the NATS pattern.
func subjectMatches(pattern, subject string) bool {
	pt := strings.Split(pattern, ".")
	st := strings.Split(subject, ".")
	for i, p := range pt {
		if p == ">" {
			return len(st) > i
		}
		if i >= len(st) || p != "*" && p != st[i] {
			return false
		}
	}
	return len(pt) == len(st)
}
