package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins"
	"github.com/beepvoice/router/stages"
)

// The README's commands and examples are tested here, read from README.md
// itself, so that they cannot drift from what the router does.

// readFile returns a file of the repository, relative to its root.
func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// marked returns the content of the fenced code block between the README
// markers <!-- name --> and <!-- /name -->.
func marked(t *testing.T, doc, name string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "<!-- "+name+" -->\n")
	if !ok {
		t.Fatalf("README.md has no <!-- %s --> marker", name)
	}
	block, _, ok := strings.Cut(rest, "<!-- /"+name+" -->")
	if !ok {
		t.Fatalf("README.md has no <!-- /%s --> marker", name)
	}
	_, code, ok := strings.Cut(block, "```yaml\n")
	if !ok {
		t.Fatalf("the %s block of README.md is not a ```yaml block", name)
	}
	code, _, ok = strings.Cut(code, "```")
	if !ok {
		t.Fatalf("the %s block of README.md is not closed", name)
	}
	return code
}

// sameSettings fails unless got has the stages of want, by name and kind,
// with the same settings once decoded over their kinds' defaults.
func sameSettings(t *testing.T, reg *pipeline.Registry, got, want *pipeline.Config) {
	t.Helper()
	if len(got.Stages) != len(want.Stages) {
		t.Fatalf("%d stages, want %d", len(got.Stages), len(want.Stages))
	}
	for i := range want.Stages {
		g, w := got.Stages[i], want.Stages[i]
		if g.Name != w.Name || g.Kind != w.Kind {
			t.Errorf("stage %d: %s (kind %q), want %s (kind %q)", i+1, g.Name, g.Kind, w.Name, w.Kind)
			continue
		}
		gs, err := reg.Settings(g)
		if err != nil {
			t.Fatalf("stage %s: %v", g.Name, err)
		}
		ws, err := reg.Settings(w)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(gs, ws) {
			t.Errorf("stage %s: settings %+v, want %+v", g.Name, gs, ws)
		}
	}
}

// TestPrintPipeline: -print-pipeline prints the default pipeline with a
// comment on every stage and every setting, a file the router runs as the
// default; its commented-out plugin stage is a valid stage once uncommented.
func TestPrintPipeline(t *testing.T) {
	reg := registry()
	if missing := reg.Undocumented(); len(missing) > 0 {
		t.Errorf("stages or settings without documentation (Kind.Doc, doc tag): %v", missing)
	}
	out, err := defaultPipeline(reg)
	if err != nil {
		t.Fatal(err)
	}
	def, err := reg.Config(stages.Default...)
	if err != nil {
		t.Fatal(err)
	}
	printed, err := pipeline.ParseConfig(strings.NewReader(string(out)))
	if err != nil {
		t.Fatalf("printed pipeline does not parse: %v\n%s", err, out)
	}
	sameSettings(t, reg, printed, def)

	// A comment above every stage and every setting.
	var doc struct {
		Stages []struct {
			Name     string    `yaml:"name"`
			Settings yaml.Node `yaml:"settings"`
		} `yaml:"stages"`
	}
	var root yaml.Node
	if err := yaml.Unmarshal(out, &root); err != nil {
		t.Fatal(err)
	}
	if err := root.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	stagesNode := root.Content[0].Content[1]
	for i, st := range doc.Stages {
		if c := stagesNode.Content[i].HeadComment; !strings.HasPrefix(c, "# "+st.Name+": ") {
			t.Errorf("stage %s: comment %q, want one naming it and saying what it does", st.Name, c)
		}
		for j := 0; j+1 < len(st.Settings.Content); j += 2 {
			if key := st.Settings.Content[j]; len(key.HeadComment) < len("# ...") {
				t.Errorf("stage %s: setting %s has no comment", st.Name, key.Value)
			}
		}
	}
	if !strings.HasPrefix(string(out), "# The router's default pipeline") {
		t.Errorf("no header comment:\n%s", out)
	}

	// The plugin stage, uncommented as its comment says.
	_, example, ok := strings.Cut(string(out), "\n  # - name: recorder\n")
	if !ok {
		t.Fatalf("no commented-out plugin stage:\n%s", out)
	}
	var uncommented strings.Builder
	uncommented.WriteString("stages:\n  - name: recorder\n")
	for l := range strings.Lines(example) {
		rest, ok := strings.CutPrefix(l, "  # ")
		if !ok {
			t.Fatalf("line %q of the plugin stage is not commented out", l)
		}
		uncommented.WriteString("  " + rest)
	}
	plugin, err := pipeline.ParseConfig(strings.NewReader(uncommented.String()))
	if err != nil {
		t.Fatalf("uncommented plugin stage does not parse: %v\n%s", err, uncommented.String())
	}
	got, err := reg.Settings(plugin.Stages[0])
	if err != nil {
		t.Fatal(err)
	}
	want := plugins.DefaultSettings
	want.Path, want.Args = "/usr/local/bin/beep-recorder", []string{"-dir", "/var/lib/beep/rec"}
	if plugin.Stages[0].Kind != plugins.Kind || !reflect.DeepEqual(got, &want) {
		t.Errorf("uncommented plugin stage: kind %q, %+v; want kind %q, %+v", plugin.Stages[0].Kind, got, plugins.Kind, want)
	}

	// The router runs the printed file, unchanged, as its pipeline.
	r := startRouter(t, map[string]string{"PIPELINE": writePipeline(t, string(out))})
	if names := r.a.pipe.Names(); !slices.Equal(names, stages.Default) {
		t.Errorf("router runs %v, want %v", names, stages.Default)
	}
}

// buildPlugin builds a reference plugin of plugins/ into dir, skipping the
// test when this machine lacks what it needs (cgo and libopus for the
// transcriber).
func buildPlugin(t *testing.T, dir, name string, tags ...string) string {
	t.Helper()
	bin := filepath.Join(dir, name)
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	out, err := exec.Command("go", append(args, "../../plugins/"+name)...).CombinedOutput()
	if err != nil {
		if len(tags) > 0 {
			t.Skipf("plugins/%s does not build here (it needs cgo and Debian's libopus-dev, pkg-config): %v\n%s", name, err, out)
		}
		t.Fatalf("go build plugins/%s: %v\n%s", name, err, out)
	}
	return bin
}

// TestREADMEPipeline: the README's pipeline blocks are what they say: the
// default pipeline, and a plugin example a router starts with.
func TestREADMEPipeline(t *testing.T) {
	doc := readFile(t, "README.md")
	reg := registry()

	t.Run("default", func(t *testing.T) {
		c, err := pipeline.ParseConfig(strings.NewReader(marked(t, doc, "pipeline-default")))
		if err != nil {
			t.Fatal(err)
		}
		def, err := reg.Config(stages.Default...)
		if err != nil {
			t.Fatal(err)
		}
		sameSettings(t, reg, c, def)
	})

	t.Run("plugin example", func(t *testing.T) {
		example := marked(t, doc, "pipeline-example")
		c, err := pipeline.ParseConfig(strings.NewReader(example))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, sc := range c.Stages {
			names = append(names, sc.Name)
		}
		if !slices.Contains(names, "recorder") || !slices.Contains(names, "transcriber") {
			t.Fatalf("the example has stages %v, want the recorder and the transcriber", names)
		}
		if _, err := exec.LookPath("pocketsphinx_continuous"); err != nil {
			t.Skip("the transcriber needs pocketsphinx_continuous (Debian's pocketsphinx, pocketsphinx-en-us)")
		}
		// The paths the README installs to are this test's own.
		dir := t.TempDir()
		rec := filepath.Join(dir, "rec")
		if err := os.Mkdir(rec, 0o755); err != nil {
			t.Fatal(err)
		}
		paths := strings.NewReplacer(
			"/usr/local/bin/beep-recorder", buildPlugin(t, dir, "recorder"),
			"/usr/local/bin/beep-transcriber", buildPlugin(t, dir, "transcriber", "opus"),
			"/var/lib/beep/rec", rec,
		)
		for _, p := range []string{"/usr/local/bin/beep-recorder", "/usr/local/bin/beep-transcriber", "/var/lib/beep/rec"} {
			if !strings.Contains(example, p) {
				t.Fatalf("the example no longer names %s: update this test with the README", p)
			}
		}
		r := startRouter(t, map[string]string{"PIPELINE": writePipeline(t, paths.Replace(example))})
		if got := r.a.pipe.Names(); !slices.Equal(got, names) {
			t.Errorf("router runs %v, want %v", got, names)
		}
	})
}

// TestREADMEGoVersion: the README and the Dockerfile name go.mod's Go
// version.
func TestREADMEGoVersion(t *testing.T) {
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(readFile(t, "go.mod"))
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	version := m[1]
	tests := []struct{ file, want string }{
		{"README.md", "Go " + version + " or newer"},
		{"README.md", "build with Go " + version},
		{"Dockerfile", "ARG GO_VERSION=" + version + "\n"},
		{"Dockerfile", "FROM golang:${GO_VERSION}-"},
	}
	for _, tt := range tests {
		if !strings.Contains(readFile(t, tt.file), tt.want) {
			t.Errorf("%s does not say %q (go.mod: go %s)", tt.file, tt.want, version)
		}
	}
}

// TestREADMEFirstCommands: README.md opens with the two commands, the
// router with its embedded defaults and the demo, and the tests exactly as
// CI runs them (the last command of .ci/run).
func TestREADMEFirstCommands(t *testing.T) {
	_, block, _ := strings.Cut(readFile(t, "README.md"), "```sh\n")
	block, _, _ = strings.Cut(block, "```")
	var cmds []string
	for l := range strings.Lines(block) {
		cmd, _, _ := strings.Cut(l, "#")
		cmds = append(cmds, strings.TrimSpace(cmd))
	}
	var ci string
	for l := range strings.Lines(readFile(t, ".ci/run")) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			ci = l
		}
	}
	want := []string{"go run ./cmd/router -dev", ci}
	if !slices.Equal(cmds, want) {
		t.Errorf("README.md's first commands are %q, want %q", cmds, want)
	}
}

// curlCommand is one curl line of the README.
type curlCommand struct {
	line       string
	method     string
	url        string
	header     http.Header
	body       string
	stream     bool   // -N: the answer is a stream, read until expect
	background bool   // ends with &: kept open while the next lines run
	expect     string // after "# → ": text the answer contains
}

// curlWords splits a curl line into shell words (single and double quotes,
// backslash escapes), its trailing "&", and its comment.
func curlWords(line string) (words []string, background bool, comment string, err error) {
	var w strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, false, "", fmt.Errorf("unclosed ' in %q", line)
			}
			w.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			for i++; i < len(line) && line[i] != '"'; i++ {
				if line[i] == '\\' && i+1 < len(line) {
					i++
				}
				w.WriteByte(line[i])
			}
			if i == len(line) {
				return nil, false, "", fmt.Errorf("unclosed \" in %q", line)
			}
			inWord = true
		case c == '\\' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words, inWord = append(words, w.String()), false
				w.Reset()
			}
		case c == '#' && !inWord:
			comment = strings.TrimSpace(line[i+1:])
			i = len(line)
		case c == '&' && !inWord:
			background = true
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, background, comment, nil
}

// parseCurl reads one curl line, refusing options it does not know, so
// that the README uses no curl feature this test does not check.
func parseCurl(line string) (curlCommand, error) {
	words, bg, comment, err := curlWords(line)
	if err != nil {
		return curlCommand{}, err
	}
	c := curlCommand{line: line, header: http.Header{}, background: bg}
	if e, ok := strings.CutPrefix(comment, "→ "); ok {
		c.expect = e
	}
	for i := 1; i < len(words); i++ {
		arg := func() (string, error) {
			if i+1 >= len(words) {
				return "", fmt.Errorf("%s without its value", words[i])
			}
			i++
			return words[i], nil
		}
		switch w := words[i]; {
		case w == "-X":
			if c.method, err = arg(); err != nil {
				return c, err
			}
		case w == "-H":
			h, err := arg()
			if err != nil {
				return c, err
			}
			k, v, ok := strings.Cut(h, ":")
			if !ok {
				return c, fmt.Errorf("header %q", h)
			}
			c.header.Add(k, strings.TrimSpace(v))
		case w == "-d":
			if c.body, err = arg(); err != nil {
				return c, err
			}
		case w == "-o":
			if _, err := arg(); err != nil { // the file: the test reads the body instead
				return c, err
			}
		case w == "-N":
			c.stream = true
		case strings.HasPrefix(w, "http://"):
			c.url = w
		default:
			return c, fmt.Errorf("curl option %q unknown to this test", w)
		}
	}
	if words[0] != "curl" || c.url == "" {
		return c, fmt.Errorf("not a curl command with a URL: %q", line)
	}
	if c.method == "" {
		c.method = http.MethodGet
		if c.body != "" {
			c.method = http.MethodPost // as curl -d does
		}
	}
	if c.stream && c.expect == "" {
		return c, fmt.Errorf("a streaming curl (-N) needs a \"# → text\" to wait for: %q", line)
	}
	return c, nil
}

// TestCurlWords: the shell-word splitter the README's curl lines go
// through.
func TestCurlWords(t *testing.T) {
	tests := []struct {
		line       string
		words      []string
		background bool
		comment    string
	}{
		{`curl http://a/b`, []string{"curl", "http://a/b"}, false, ""},
		{`curl -H 'X: {"a":"b c"}' http://a  # → ok`, []string{"curl", "-H", `X: {"a":"b c"}`, "http://a"}, false, "→ ok"},
		{`curl -N "http://a/?x=1&y=2" &  # → event: ring`, []string{"curl", "-N", "http://a/?x=1&y=2"}, true, "→ event: ring"},
		{`curl -d "say \"hi\"" http://a#frag`, []string{"curl", "-d", `say "hi"`, "http://a#frag"}, false, ""},
	}
	for _, tt := range tests {
		words, bg, comment, err := curlWords(tt.line)
		if err != nil || !slices.Equal(words, tt.words) || bg != tt.background || comment != tt.comment {
			t.Errorf("curlWords(%q) = %q, %v, %q, %v; want %q, %v, %q", tt.line, words, bg, comment, err, tt.words, tt.background, tt.comment)
		}
	}
	for _, bad := range []string{`curl 'open http://a`, `curl --fail http://a`, `curl -N http://a`, `curl -X`, `wget http://a`} {
		if _, err := parseCurl(bad); err == nil {
			t.Errorf("parseCurl(%q) accepted", bad)
		}
	}
}

// TestREADMECurl runs every curl line of README.md and docs/arbiter.md, in
// order, each file against its own -dev router, as a reader would against `go run ./cmd/router -dev`: each
// must be answered 2xx, with the text its "# → " comment names. A line
// ending with & keeps its stream open while the next ones run, and its text
// is looked for once they have.
func TestREADMECurl(t *testing.T) {
	tests := []struct {
		file string
		min  int // curl lines it has at least, so that a broken extraction fails
	}{
		{"README.md", 7},
		{"docs/arbiter.md", 3},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) { runCurls(t, readFile(t, tt.file), tt.min) })
	}
}

// runCurls runs the curl lines of doc against a -dev router; doc has at
// least min of them.
func runCurls(t *testing.T, doc string, min int) {
	var cmds []curlCommand
	for l := range strings.Lines(doc) {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "curl ") {
			c, err := parseCurl(l)
			if err != nil {
				t.Fatal(err)
			}
			cmds = append(cmds, c)
		}
	}
	if len(cmds) < min {
		t.Fatalf("%d curl lines, want at least %d: the extraction is broken", len(cmds), min)
	}

	vars := map[string]string{"LISTEN": "127.0.0.1:0", "ICE_IPS": "127.0.0.1"}
	cfg, err := loadConfig(func(k string) string { return vars[k] }, true)
	if err != nil {
		t.Fatal(err)
	}
	a, err := start(cfg, testLogger(t), registry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	base := "http://" + a.addr()

	// Someone spoke in c-42: the bite the "watching bites" lines show.
	nc, err := nats.Connect("", nats.InProcessServer(a.ns))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	raw, err := proto.Marshal(&beeppb.Bite{Key: "c-42", User: "u-1", Client: "phone", Format: "ogg-opus", DurationMs: 480, StartMs: uint64(time.Now().UnixMilli()), Data: []byte("OggS")})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("bite", raw); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		resp, err := http.Get(base + "/demo/bites/1.ogg")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the demo did not receive the bite: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}

	type pending struct {
		c    curlCommand
		body *testutil.Buffer
		done chan struct{}
	}
	var background []pending
	defer func() {
		cancel() // ends the background streams
		for _, p := range background {
			<-p.done
		}
	}()
	for _, c := range cmds {
		u, ok := strings.CutPrefix(c.url, "http://localhost:8080")
		if !ok {
			t.Errorf("%s: the URL is not the -dev router's http://localhost:8080", c.line)
			continue
		}
		req, err := http.NewRequestWithContext(ctx, c.method, base+u, strings.NewReader(c.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = c.header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.line, err)
		}
		if resp.StatusCode/100 != 2 {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Errorf("%s: %s %s", c.line, resp.Status, b)
			continue
		}
		if c.background {
			p := pending{c: c, body: &testutil.Buffer{}, done: make(chan struct{})}
			go func() {
				defer close(p.done)
				defer resp.Body.Close()
				_, _ = io.Copy(p.body, resp.Body)
			}()
			background = append(background, p)
			continue
		}
		var body string
		if c.stream {
			body = readUntil(resp.Body, c.expect, 10*time.Second)
		} else {
			b, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Errorf("%s: %v", c.line, err)
			}
			body = string(b)
		}
		resp.Body.Close()
		if !strings.Contains(body, c.expect) {
			t.Errorf("%s: answered %q, want it to contain %q", c.line, body, c.expect)
		}
	}
	for _, p := range background {
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(p.body.String(), p.c.expect) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := p.body.String(); !strings.Contains(got, p.c.expect) {
			t.Errorf("%s: streamed %q, want it to contain %q", p.c.line, got, p.c.expect)
		}
	}
}

// readUntil reads a streamed body line by line until a line contains want
// or d has passed, and returns what it read.
func readUntil(body io.ReadCloser, want string, d time.Duration) string {
	timer := time.AfterFunc(d, func() { body.Close() })
	defer timer.Stop()
	var got strings.Builder
	sc := bufio.NewScanner(body)
	for sc.Scan() {
		got.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), want) {
			break
		}
	}
	return got.String()
}
