package pipeline

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// docSettings are documented settings, one of them left out when empty.
type docSettings struct {
	Size  int      `yaml:"size" doc:"how many things at once"`
	Every Duration `yaml:"every" doc:"how often the thing happens; a long line that has to be wrapped because it goes on and on past the width"`
	Tags  []string `yaml:"tags,omitempty" doc:"labels of the thing"`
}

// bareSettings document nothing.
type bareSettings struct {
	Colour string `yaml:"colour"`
	Hidden int    `yaml:"-"`
	Weight int
}

// docRegistry has a documented kind, a kind without settings, and an
// undocumented one.
func docRegistry() *Registry {
	r := NewRegistry()
	nop := func(env Env, name string, s *docSettings) (Stage, error) { return stageFunc(func(*Packet) {}), nil }
	r.Register(Define("doc", "a documented stage", docSettings{Size: 2, Every: Duration(time.Second)}, nop))
	r.Register(Define("empty", "a stage without settings", struct{}{},
		func(env Env, name string, s *struct{}) (Stage, error) { return stageFunc(func(*Packet) {}), nil }))
	r.Register(Define("bare", "", bareSettings{Colour: "red"},
		func(env Env, name string, s *bareSettings) (Stage, error) { return stageFunc(func(*Packet) {}), nil }))
	return r
}

// TestCommented: the commented rendering of a configuration says what each
// stage and each setting does, and parses back to the same configuration.
func TestCommented(t *testing.T) {
	r := docRegistry()
	c, err := r.Config("empty", "doc")
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Commented(c, "the header\nsecond line")
	if err != nil {
		t.Fatal(err)
	}
	text := string(out)
	for _, want := range []string{
		"# the header\n# second line\n",
		"  # empty: a stage without settings\n  - name: empty\n",
		"  # doc: a documented stage\n  - name: doc\n",
		"      # how many things at once\n      size: 2\n",
		"      # tags (not set): labels of the thing\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "settings: {}") {
		t.Errorf("a stage without settings has an empty settings map:\n%s", text)
	}
	for l := range strings.Lines(text) {
		if comment, ok := strings.CutPrefix(strings.TrimSpace(l), "# "); ok && len(comment) > commentWidth {
			t.Errorf("comment line of %d characters, want at most %d: %q", len(comment), commentWidth, comment)
		}
	}

	back, err := ParseConfig(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the commented output does not parse: %v\n%s", err, text)
	}
	if len(back.Stages) != len(c.Stages) {
		t.Fatalf("%d stages back, want %d", len(back.Stages), len(c.Stages))
	}
	for i := range c.Stages {
		want, err := r.Settings(c.Stages[i])
		if err != nil {
			t.Fatal(err)
		}
		got, err := r.Settings(back.Stages[i])
		if err != nil {
			t.Fatal(err)
		}
		if back.Stages[i].Name != c.Stages[i].Name || !reflect.DeepEqual(got, want) {
			t.Errorf("stage %d: %s %+v back, want %s %+v", i, back.Stages[i].Name, got, c.Stages[i].Name, want)
		}
	}
	if _, err := r.Commented(&Config{Stages: []StageConfig{{Name: "nope"}}}, ""); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("an unknown kind rendered: %v", err)
	}
}

// TestSettings: Registry.Settings decodes a stage's settings over its
// kind's defaults, refusing unknown keys and kinds.
func TestSettings(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       any    // nil when an error is expected
		wantErr    string // part of the error
	}{
		{"defaults", "name: doc", &docSettings{Size: 2, Every: Duration(time.Second)}, ""},
		{"set", "{name: doc, settings: {size: 5, tags: [a]}}", &docSettings{Size: 5, Every: Duration(time.Second), Tags: []string{"a"}}, ""},
		{"kind", "{name: x, kind: doc, settings: {every: 2s}}", &docSettings{Size: 2, Every: Duration(2 * time.Second)}, ""},
		{"unknown setting", "{name: doc, settings: {colour: red}}", nil, "colour"},
		{"unknown kind", "name: nope", nil, `unknown kind "nope"`},
	}
	r := docRegistry()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sc StageConfig
			if err := yaml.Unmarshal([]byte(tt.yaml), &sc); err != nil {
				t.Fatal(err)
			}
			got, err := r.Settings(sc)
			if tt.want == nil {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("%+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

// TestUndocumented names every kind without a Doc and every setting
// without a doc tag, and nothing else.
func TestUndocumented(t *testing.T) {
	got := docRegistry().Undocumented()
	want := []string{"bare", "bare.colour", "bare.weight"}
	if !slices.Equal(got, want) {
		t.Fatalf("Undocumented() = %q, want %q", got, want)
	}
}

// TestWrap breaks at spaces within the width and keeps long words whole.
func TestWrap(t *testing.T) {
	tests := []struct {
		in    string
		width int
		want  string
	}{
		{"", 10, ""},
		{"short", 10, "short"},
		{"one two three", 7, "one two\nthree"},
		{"a verylongword b", 4, "a\nverylongword\nb"},
		{"  spaced   out  ", 20, "spaced out"},
	}
	for _, tt := range tests {
		if got := wrap(tt.in, tt.width); got != tt.want {
			t.Errorf("wrap(%q, %d) = %q, want %q", tt.in, tt.width, got, tt.want)
		}
	}
}
