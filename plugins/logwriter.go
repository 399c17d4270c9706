package plugins

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
)

// maxLogLine bounds one logged line of plugin output.
const maxLogLine = 8 << 10

// logWriter re-logs a plugin's output, line by line, on the stage's logger.
// JSON lines (slog's JSON handler, as the SDK writes, or hclog's) keep their
// level, message and attributes; other lines are logged as they are, stderr
// at warning level (a Go panic lands there) and stdout at info.
type logWriter struct {
	log    *slog.Logger
	stream string
	level  slog.Level

	mu   sync.Mutex
	line []byte
	long bool // the current line was cut
}

func newLogWriter(log *slog.Logger, stream string) *logWriter {
	level := slog.LevelWarn
	if stream == "stdout" {
		level = slog.LevelInfo
	}
	return &logWriter{log: log.With("plugin_output", stream), stream: stream, level: level}
}

// Write logs each complete line of p; it never fails.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if room := maxLogLine - len(w.line); room > 0 {
			w.line = append(w.line, chunk[:min(room, len(chunk))]...)
		}
		if len(chunk) > maxLogLine-len(w.line) {
			w.long = true
		}
		if i < 0 {
			break
		}
		w.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (w *logWriter) emit() {
	line := bytes.TrimRight(w.line, "\r")
	defer func() { w.line, w.long = w.line[:0], false }()
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	if !w.long && len(line) > 0 && line[0] == '{' {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			w.logJSON(m)
			return
		}
	}
	w.log.Log(context.Background(), w.level, string(line))
}

// logJSON logs a structured line from slog's or hclog's JSON handler.
func (w *logWriter) logJSON(m map[string]any) {
	msg, _ := first(m, "msg", "@message").(string)
	lv, _ := first(m, "level", "@level").(string)
	var level slog.Level
	switch strings.ToLower(lv) {
	case "trace", "debug":
		level = slog.LevelDebug
	case "info", "":
		level = slog.LevelInfo
	case "warn", "warning":
		level = slog.LevelWarn
	default:
		level = slog.LevelError
	}
	attrs := make([]any, 0, 2*len(m))
	for k, v := range m {
		switch k {
		case "msg", "@message", "level", "@level", "time", "@timestamp", "@module":
			continue
		}
		attrs = append(attrs, k, v)
	}
	w.log.Log(context.Background(), level, msg, attrs...)
}

func first(m map[string]any, keys ...string) any {
	for _, k := range keys {
		if v, ok := m[k]; ok {
			return v
		}
	}
	return nil
}
