package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/plugins/sdk"
)

// options are the recorder's settings, from flags and the stage's config.
type options struct {
	Dir     string `json:"dir"`
	Segment string `json:"segment"`
	Subject string `json:"subject"`
}

// recorder holds the segments being written, one per stream. Its methods
// are the plugin's handlers, called on one goroutine.
type recorder struct {
	o       options
	segment time.Duration
	open    map[uint32]*segment
}

// segment is one Ogg Opus file being written.
type segment struct {
	stream *sdk.Stream
	start  time.Time
	part   string // path being written
	path   string // final path
	f      *os.File
	bw     *bufio.Writer
	w      *oggopus.Writer
}

// sidecar is the JSON written next to each segment.
type sidecar struct {
	Conversation string    `json:"conversation"`
	User         string    `json:"user"`
	Client       string    `json:"client"`
	Track        string    `json:"track"`
	SSRC         uint32    `json:"ssrc"`
	Start        time.Time `json:"start"`
	// Duration is the playable audio in seconds (pre-skip excluded).
	Duration float64 `json:"duration"`
	File     string  `json:"file"`
}

// result is what the recorder publishes for each finished segment.
type result struct {
	sidecar
	Sidecar string `json:"sidecar"`
}

func newRecorder(o options) *recorder {
	return &recorder{o: o, open: make(map[uint32]*segment)}
}

// configure applies the stage's config over the flags.
func (r *recorder) configure(s *sdk.Session) error {
	if err := s.DecodeConfig(&r.o); err != nil {
		return err
	}
	d, err := time.ParseDuration(r.o.Segment)
	if err != nil || d < time.Second {
		return fmt.Errorf("segment %q: want a duration of at least 1s", r.o.Segment)
	}
	r.segment = d
	if err := os.MkdirAll(r.o.Dir, 0o755); err != nil {
		return fmt.Errorf("dir: %w", err)
	}
	s.Log.Info("recording", "dir", r.o.Dir, "segment", d.String())
	return nil
}

func (r *recorder) packet(s *sdk.Session, p *sdk.Packet) {
	if len(p.RTP.Payload) == 0 {
		return
	}
	seg := r.open[p.Stream.ID]
	if seg == nil {
		var err error
		if seg, err = r.create(p.Stream, p.Arrival); err != nil {
			s.Log.Error("cannot start a recording", "conversation", p.Stream.Conversation, "user", p.Stream.User, "err", err)
			return
		}
		r.open[p.Stream.ID] = seg
	}
	switch err := seg.w.WriteRTP(p.RTP.Payload, p.RTP.Timestamp); {
	case err == nil:
	case errors.Is(err, oggopus.ErrReordered), errors.Is(err, oggopus.ErrGapTooLong):
		// A late duplicate is dropped; a long pause is shortened.
	case errors.Is(err, oggopus.ErrInvalidPacket):
		return
	default:
		s.Log.Error("recording failed", "file", seg.part, "err", err)
		r.abort(s, p.Stream.ID, seg)
		return
	}
	if seg.w.Duration() >= r.segment {
		r.finish(s, p.Stream.ID, seg)
	}
}

func (r *recorder) streamEnd(s *sdk.Session, st *sdk.Stream) {
	if seg := r.open[st.ID]; seg != nil {
		r.finish(s, st.ID, seg)
	}
}

func (r *recorder) stop(s *sdk.Session) {
	for id, seg := range r.open {
		r.finish(s, id, seg)
	}
}

// create opens a new segment of stream st starting at start.
func (r *recorder) create(st *sdk.Stream, start time.Time) (*segment, error) {
	dir := filepath.Join(r.o.Dir, safeName(st.Conversation), safeName(st.User))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create dir: %w", err)
	}
	name := start.UTC().Format("20060102T150405.000Z") + "-" + safeName(st.Client) + "-" + strconv.FormatUint(uint64(st.SSRC), 10)
	seg := &segment{stream: st, start: start, path: filepath.Join(dir, name+".opus")}
	seg.part = seg.path + ".part"
	f, err := os.Create(seg.part)
	if err != nil {
		return nil, fmt.Errorf("create file: %w", err)
	}
	seg.f = f
	seg.bw = bufio.NewWriterSize(f, 32<<10)
	seg.w, err = oggopus.NewWriter(seg.bw, oggopus.Config{
		Vendor: "beep-recorder",
		Comments: []string{
			"BEEP_CONVERSATION=" + st.Conversation,
			"BEEP_USER=" + st.User,
			"BEEP_CLIENT=" + st.Client,
			"BEEP_START=" + start.UTC().Format(time.RFC3339Nano),
		},
	})
	if err != nil {
		_ = f.Close()
		_ = os.Remove(seg.part)
		return nil, fmt.Errorf("start ogg stream: %w", err)
	}
	return seg, nil
}

// finish completes a segment: the stream is ended, the file renamed into
// place, the sidecar written and the result published.
func (r *recorder) finish(s *sdk.Session, id uint32, seg *segment) {
	delete(r.open, id)
	err := seg.w.Close()
	if err == nil {
		err = seg.bw.Flush()
	}
	if err == nil {
		err = seg.f.Sync()
	}
	if cerr := seg.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(seg.part, seg.path)
	}
	if err != nil {
		s.Log.Error("recording lost", "file", seg.part, "err", err)
		_ = os.Remove(seg.part)
		return
	}
	played := int64(seg.w.Samples()) - int64(seg.w.PreSkip())
	sc := sidecar{
		Conversation: seg.stream.Conversation, User: seg.stream.User, Client: seg.stream.Client,
		Track: seg.stream.Track, SSRC: seg.stream.SSRC, Start: seg.start.UTC(),
		Duration: float64(max(played, 0)) / oggopus.SampleRate,
		File:     seg.path,
	}
	side := seg.path[:len(seg.path)-len(".opus")] + ".json"
	if err := writeJSON(side, sc); err != nil {
		s.Log.Error("sidecar not written", "file", side, "err", err)
		side = ""
	}
	if err := s.EmitJSON(sdk.Result{
		Subject: r.o.Subject, Conversation: sc.Conversation, User: sc.User, Kind: "recording",
	}, result{sidecar: sc, Sidecar: side}); err != nil {
		s.Log.Error("result not sent", "err", err)
	}
}

// abort drops a segment that cannot be written.
func (r *recorder) abort(s *sdk.Session, id uint32, seg *segment) {
	delete(r.open, id)
	_ = seg.f.Close()
	if err := os.Remove(seg.part); err != nil {
		s.Log.Warn("cannot remove a failed recording", "file", seg.part, "err", err)
	}
}

// writeJSON writes v to path atomically.
func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// safeName makes an id usable as one path element: characters other than
// letters, digits, '.', '_' and '-' become '_', and "", "." and ".." are
// replaced.
func safeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	switch string(b) {
	case "", ".", "..":
		return "_" + string(b)
	}
	return string(b)
}
