package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/beepvoice/router/plugins/sdk"
)

// decodeRate is the rate speech recognisers want; libopus decodes to it
// directly, resampling internally.
const decodeRate = 16000

// options are the transcriber's settings, from flags and the stage's config.
type options struct {
	Pocketsphinx string `json:"pocketsphinx"`
	HMM          string `json:"hmm"`
	LM           string `json:"lm"`
	Dict         string `json:"dict"`
	JSGF         string `json:"jsgf"`
	KWS          string `json:"kws"`
	Subject      string `json:"subject"`
	Workers      int    `json:"workers"`
	Queue        int    `json:"queue"`
	Timeout      string `json:"timeout"`
	Empty        bool   `json:"empty"`
}

// transcript is what the transcriber publishes.
type transcript struct {
	Conversation string    `json:"conversation"`
	User         string    `json:"user"`
	Client       string    `json:"client"`
	Track        string    `json:"track"`
	Seq          uint64    `json:"seq"`
	Start        time.Time `json:"start"`
	// Duration of the bite in seconds.
	Duration float64 `json:"duration"`
	Text     string  `json:"text"`
}

type transcriber struct {
	o       options
	timeout time.Duration
	prog    string

	sess    *sdk.Session
	jobs    chan *sdk.Bite
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
	dropped int
}

func newTranscriber(o options) *transcriber { return &transcriber{o: o} }

// configure applies the stage's config and starts the workers.
func (t *transcriber) configure(s *sdk.Session) error {
	if err := s.DecodeConfig(&t.o); err != nil {
		return err
	}
	d, err := time.ParseDuration(t.o.Timeout)
	if err != nil || d <= 0 {
		return fmt.Errorf("timeout %q: want a positive duration", t.o.Timeout)
	}
	t.timeout = d
	if t.o.Workers < 1 || t.o.Queue < 1 {
		return errors.New("workers and queue must be positive")
	}
	if t.prog, err = exec.LookPath(t.o.Pocketsphinx); err != nil {
		return fmt.Errorf("recogniser: %w (install Debian's pocketsphinx and pocketsphinx-en-us)", err)
	}
	for _, f := range []string{t.o.HMM, t.o.LM, t.o.Dict, t.o.JSGF, t.o.KWS} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("model file: %w", err)
		}
	}
	t.sess = s
	t.jobs = make(chan *sdk.Bite, t.o.Queue)
	t.ctx, t.cancel = context.WithCancel(context.Background())
	for range t.o.Workers {
		t.wg.Add(1)
		go t.work()
	}
	s.Log.Info("transcribing", "recogniser", t.prog, "workers", t.o.Workers, "subject", t.o.Subject)
	return nil
}

// bite queues b for a worker, dropping it when the queue is full.
func (t *transcriber) bite(s *sdk.Session, b *sdk.Bite) {
	if b.Format != sdk.FormatOggOpus {
		return
	}
	select {
	case t.jobs <- b:
	default:
		t.dropped++
		s.Log.Warn("bite dropped: recogniser busy", "conversation", b.Conversation, "dropped", t.dropped)
	}
}

// stop lets the workers finish the queued bites; the host bounds how long.
func (t *transcriber) stop(s *sdk.Session) {
	if t.jobs == nil {
		return
	}
	close(t.jobs)
	t.wg.Wait()
	t.cancel()
}

func (t *transcriber) work() {
	defer t.wg.Done()
	for b := range t.jobs {
		text, err := t.transcribe(b)
		if err != nil {
			t.sess.Log.Error("transcription failed", "conversation", b.Conversation, "user", b.User, "seq", b.Seq, "err", err)
			continue
		}
		if text == "" && !t.o.Empty {
			continue
		}
		_ = t.sess.EmitJSON(sdk.Result{Subject: t.o.Subject, Conversation: b.Conversation, User: b.User, Kind: "transcript"},
			transcript{
				Conversation: b.Conversation, User: b.User, Client: b.Client, Track: b.Track, Seq: b.Seq,
				Start: b.Start.UTC(), Duration: b.Duration.Seconds(), Text: text,
			})
	}
}

// transcribe decodes b and runs the recogniser on it.
func (t *transcriber) transcribe(b *sdk.Bite) (string, error) {
	pcm, err := decodeOggOpus(b.Data)
	if err != nil {
		return "", err
	}
	if len(pcm) == 0 {
		return "", nil
	}
	f, err := os.CreateTemp("", "beep-transcriber-*.wav")
	if err != nil {
		return "", fmt.Errorf("temp file: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(wav(pcm, decodeRate))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("write wav: %w", err)
	}
	return t.recognise(f.Name())
}

// recognise runs pocketsphinx_continuous on a 16 kHz mono WAV file and
// returns its hypotheses joined by spaces.
func (t *transcriber) recognise(path string) (string, error) {
	ctx, cancel := context.WithTimeout(t.ctx, t.timeout)
	defer cancel()
	args := []string{"-infile", path, "-logfn", os.DevNull, "-samprate", "16000"}
	for _, a := range [...]struct{ flag, v string }{
		{"-hmm", t.o.HMM}, {"-lm", t.o.LM}, {"-dict", t.o.Dict}, {"-jsgf", t.o.JSGF}, {"-kws", t.o.KWS},
	} {
		if a.v != "" {
			args = append(args, a.flag, a.v)
		}
	}
	cmd := exec.CommandContext(ctx, t.prog, args...)
	// The recogniser dies with the plugin, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %w: %s", t.prog, err, strings.TrimSpace(lastLine(errb.String())))
	}
	return strings.Join(strings.Fields(out.String()), " "), nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// wav returns pcm as a mono 16-bit WAV file.
func wav(pcm []int16, rate int) []byte {
	var b bytes.Buffer
	n := len(pcm) * 2
	b.WriteString("RIFF")
	_ = binary.Write(&b, binary.LittleEndian, uint32(36+n))
	b.WriteString("WAVEfmt ")
	_ = binary.Write(&b, binary.LittleEndian, struct {
		Size          uint32
		Format, Chans uint16
		Rate, Bytes   uint32
		Align, Bits   uint16
	}{16, 1, 1, uint32(rate), uint32(rate * 2), 2, 16})
	b.WriteString("data")
	_ = binary.Write(&b, binary.LittleEndian, uint32(n))
	_ = binary.Write(&b, binary.LittleEndian, pcm)
	return b.Bytes()
}
