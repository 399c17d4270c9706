// Package sdk is for writing Beep router plugins: programs that the router
// runs beside itself and feeds with the RTP packets of the tracks they see,
// with completed bites, or both, and that send results back (a transcript, a
// recording's file name, an event) for the router to publish on NATS.
//
// A plugin is one small main:
//
//	func main() {
//		sdk.Serve(sdk.Plugin{
//			Name: "counter/1.0",
//			Packet: func(s *sdk.Session, p *sdk.Packet) { n[p.Stream.ID]++ },
//			StreamEnd: func(s *sdk.Session, st *sdk.Stream) {
//				s.EmitJSON(sdk.Result{Conversation: st.Conversation, User: st.User}, map[string]int{"packets": n[st.ID]})
//			},
//		})
//	}
//
// The SDK does the go-plugin handshake, the version check, the gRPC streams
// and the batching. Handlers run one at a time on one goroutine, in the order
// the host sent the data, so a plugin's state needs no locking unless the
// plugin starts goroutines of its own. A handler that takes long stalls only
// the plugin: the router drops (and counts) what does not fit its queue, so
// slow work (a recogniser, say) belongs on a worker goroutine that calls
// Session.Emit when done.
package sdk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"
)

// Plugin describes a plugin to Serve. Set Packet, Bite or both: that is what
// the host sends.
type Plugin struct {
	// Name names the plugin and its version in the host's logs, e.g.
	// "recorder/1.2".
	Name string
	// Configure, if set, is called once before any data, with the stage's
	// settings in the Session. An error refuses the configuration: the host
	// logs it and does not use the plugin.
	Configure func(s *Session) error
	// Packet, if set, receives every RTP packet of the streams the plugin
	// sees. The Packet is reused: do not keep it or its slices.
	Packet func(s *Session, p *Packet)
	// Bite, if set, receives completed bites. The Bite is the plugin's to
	// keep.
	Bite func(s *Session, b *Bite)
	// StreamEnd, if set, is called when a stream ends: its track ended or
	// moved to another conversation. No packet of the stream follows.
	StreamEnd func(s *Session, st *Stream)
	// Stop, if set, is called once when the host is done with the plugin
	// (router shutdown) or went away, after the last data. Results emitted
	// before Stop returns are still delivered; the host waits a bounded time
	// (its stop_timeout) for Stop to return, then kills the process.
	Stop func(s *Session)
}

// Stream is one published track within one conversation.
type Stream struct {
	// ID is the host's number for the stream, unique within the process.
	ID uint32
	// Conversation is the conversation id.
	Conversation string
	// User and Client identify the publisher and its device.
	User, Client string
	// Track is the track id ("<client>/<ssrc>").
	Track string
	// SSRC is the publisher's RTP SSRC.
	SSRC uint32
}

// Packet is one RTP packet of a stream.
type Packet struct {
	// Stream is the packet's stream.
	Stream *Stream
	// RTP is the parsed packet; its Payload aliases Raw.
	RTP rtp.Packet
	// Raw is the packet as the router received it.
	Raw []byte
	// Arrival is when the packet reached the router (see pipeline.Packet).
	Arrival time.Time
	// Level is the RFC 6464 audio level in -dBov (0 loudest, 127 silence),
	// meaningful when HasLevel is set; Voice is the V bit.
	Level    uint8
	HasLevel bool
	Voice    bool
}

// Bite is a completed bite: one publisher's speech in one conversation.
type Bite struct {
	// Conversation is the conversation id.
	Conversation string
	// User, Client and Track identify the publisher.
	User, Client, Track string
	// Seq numbers the bites of one track from 0.
	Seq uint64
	// Start is the arrival time of the bite's first packet.
	Start time.Time
	// Duration is the audio the bite holds.
	Duration time.Duration
	// Format is "ogg-opus" (a complete Ogg Opus stream) or "rtp".
	Format string
	// Data is the bite's payload.
	Data []byte
}

// Bite formats.
const (
	// FormatOggOpus is a complete Ogg Opus stream (RFC 7845).
	FormatOggOpus = "ogg-opus"
	// FormatRTP is one raw RTP packet.
	FormatRTP = "rtp"
)

// Result is something the plugin produced. The host publishes Data on NATS
// subject Subject (or "plugin.<stage name>" when empty) with the headers
// Beep-Conversation, Beep-User, Beep-Plugin and Beep-Result-Kind. The host
// publishes only on the subjects its configuration allows, and only for
// conversations the plugin sees.
type Result struct {
	Subject      string
	Conversation string
	User         string
	// Kind says what Data is: "transcript", "recording", "event"...
	Kind string
	Data []byte
}

// Session is the plugin's view of the host's configuration and its way to
// send results.
type Session struct {
	// Name is the stage's name in the router's pipeline.
	Name string
	// Conversations are the glob patterns of the conversations the plugin
	// sees; the host filters, so this is for information.
	Conversations []string
	// Config is the stage's config setting, as JSON ("{}" when unset).
	Config json.RawMessage
	// Log writes to the router's log, under the stage's name.
	Log *slog.Logger

	out         *outbox
	hostDropped atomic.Uint64
}

// DecodeConfig decodes the stage's config setting into v, refusing unknown
// keys so that a misspelt setting is an error rather than ignored.
func (s *Session) DecodeConfig(v any) error {
	return DecodeJSONStrict(s.Config, v)
}

// DecodeJSONStrict decodes data into v, refusing unknown keys. Empty data
// leaves v as it is.
func DecodeJSONStrict(data []byte, v any) error {
	if len(data) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("plugin config: %w", err)
	}
	return nil
}

// Emit queues r for the host. It is safe from any goroutine and never
// blocks; results emitted when the queue is full, or after the session
// ended, are dropped and counted in Dropped.
func (s *Session) Emit(r Result) { s.out.emit(r) }

// EmitJSON emits r with v, encoded as JSON, as its Data.
func (s *Session) EmitJSON(r Result, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	r.Data = data
	s.Emit(r)
	return nil
}

// ResultsDropped returns how many results Emit dropped.
func (s *Session) ResultsDropped() uint64 { return s.out.dropped.Load() }

// HostDropped returns how many packets and bites the host dropped for this
// plugin (its queue was full), as the host reported it.
func (s *Session) HostDropped() uint64 { return s.hostDropped.Load() }

// Logger returns the logger plugins should use: JSON lines on the process's
// standard error, which the host re-logs under the stage's name. Use it
// before Serve; handlers have Session.Log.
func Logger() *slog.Logger { return logger }

var (
	stderr = os.Stderr // captured before go-plugin redirects os.Stderr
	logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: logLevel()}))
)

// logLevel reads BEEP_PLUGIN_LOG_LEVEL (debug, info, warn, error).
func logLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("BEEP_PLUGIN_LOG_LEVEL"))); err != nil {
		return slog.LevelInfo
	}
	return l
}

var errNoHandler = errors.New("sdk: plugin has neither a Packet nor a Bite handler")
