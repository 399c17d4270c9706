// Command transcriber is a Beep router plugin that transcribes bites offline.
// It decodes each Ogg Opus bite to 16 kHz mono with libopus, recognises it
// with CMU PocketSphinx (Debian's pocketsphinx_continuous, run once per bite)
// and publishes
//
//	{"conversation": "...", "user": "...", "client": "...", "start": "...", "duration": 1.5, "text": "..."}
//
// on NATS subject "transcription" (kind "transcript"). Bites wait in a
// bounded queue for a recogniser; when it is full, new bites are dropped and
// counted.
//
// Flags (the stage's config keys of the same names override them):
//
//	-pocketsphinx  the recogniser program (default pocketsphinx_continuous)
//	-hmm, -lm, -dict, -jsgf, -kws
//	               PocketSphinx model, language model, dictionary, JSGF
//	               grammar or keyword list (default: the package's en-us model)
//	-subject       NATS subject (default transcription)
//	-workers       recognisers running at once (default 1)
//	-queue         bites waiting for a recogniser (default 32)
//	-timeout       longest one recognition may take (default 30s)
//	-empty         also publish bites in which nothing was recognised
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/beepvoice/router/plugins/sdk"
)

func main() {
	if !haveOpus {
		fmt.Fprintln(os.Stderr, "beep-transcriber was built without libopus: go build -tags opus ./plugins/transcriber (needs Debian's libopus-dev)")
		os.Exit(2)
	}
	var o options
	flag.StringVar(&o.Pocketsphinx, "pocketsphinx", "pocketsphinx_continuous", "recogniser program")
	flag.StringVar(&o.HMM, "hmm", "", "acoustic model directory")
	flag.StringVar(&o.LM, "lm", "", "language model")
	flag.StringVar(&o.Dict, "dict", "", "pronunciation dictionary")
	flag.StringVar(&o.JSGF, "jsgf", "", "JSGF grammar (instead of a language model)")
	flag.StringVar(&o.KWS, "kws", "", "keyword list (instead of a language model)")
	flag.StringVar(&o.Subject, "subject", "transcription", "NATS subject")
	flag.IntVar(&o.Workers, "workers", 1, "recognisers running at once")
	flag.IntVar(&o.Queue, "queue", 32, "bites waiting for a recogniser")
	timeout := flag.Duration("timeout", 30*time.Second, "longest one recognition may take")
	flag.BoolVar(&o.Empty, "empty", false, "publish bites in which nothing was recognised")
	flag.Parse()
	o.Timeout = timeout.String()

	t := newTranscriber(o)
	sdk.Serve(sdk.Plugin{
		Name:      "transcriber/1.0",
		Configure: t.configure,
		Bite:      t.bite,
		Stop:      t.stop,
	})
}
