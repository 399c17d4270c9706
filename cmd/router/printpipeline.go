package main

import (
	"bytes"
	"strings"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins"
	"github.com/beepvoice/router/stages"
)

// pipelineHeader is the first comment of the file -print-pipeline prints.
const pipelineHeader = `The router's default pipeline (router -print-pipeline). Every RTP packet
a publisher sends passes through these stages, in order; a bite a stage
makes goes to the stages after it. Every value shown is the default: a
setting left out keeps it. Run a file like this one with PIPELINE=<path>;
an unknown stage, an unknown setting or an invalid value stops the router
at start. "name" is the stage's name in logs and metrics; "kind" selects
its implementation and defaults to the name, so that one kind can appear
twice ({name: archive, kind: nats-sink, settings: {bite_subject: archive}}).`

// pluginIntro introduces the commented-out plugin stage -print-pipeline
// prints after the default stages.
const pluginIntro = `A plugin stage (kind: plugin) runs a program of its own on the packets
and/or bites it sees (docs/plugins.md): it goes after permission-gate, and
after bite-chunker when it takes bites. To add one, copy this stage
without the first "# " of each line. Its path and args are those of the
recorder (README.md); every other setting is shown with its default.`

// examplePlugin is the plugin stage -print-pipeline shows: the recorder of
// plugins/recorder, as the README installs it.
func examplePlugin() pipeline.StageConfig {
	s := plugins.DefaultSettings
	s.Path = "/usr/local/bin/beep-recorder"
	s.Args = []string{"-dir", "/var/lib/beep/rec"}
	sc := pipeline.StageConfig{Name: "recorder", Kind: plugins.Kind}
	if err := sc.Settings.Encode(&s); err != nil {
		panic(err) // a plain struct always encodes
	}
	return sc
}

// defaultPipeline renders the default pipeline for -print-pipeline: every
// stage of stages.Default with its settings at their defaults, each under a
// comment saying what it does (from the stage's own definition, see
// pipeline.Registry.Commented), followed by a plugin stage commented out.
// The router reads it back as the default configuration.
func defaultPipeline(reg *pipeline.Registry) ([]byte, error) {
	c, err := reg.Config(stages.Default...)
	if err != nil {
		return nil, err
	}
	out, err := reg.Commented(c, pipelineHeader)
	if err != nil {
		return nil, err
	}
	plugin, err := reg.Commented(&pipeline.Config{Stages: []pipeline.StageConfig{examplePlugin()}}, "")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Write(out)
	b.WriteString("\n")
	for l := range strings.Lines(pluginIntro + "\n") {
		b.WriteString("  # " + l)
	}
	// The plugin's lines, less "stages:", commented out at the indentation
	// of a stage: removing the first "# " of each line gives the stage.
	_, stage, _ := strings.Cut(string(plugin), "stages:\n")
	for l := range strings.Lines(stage) {
		b.WriteString(strings.TrimRight("  # "+strings.TrimPrefix(l, "  "), " "))
	}
	return b.Bytes(), nil
}
