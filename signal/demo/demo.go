// Package demo serves the router's development demo: a web page at "/" from
// which a person joins a conversation with a microphone, hears up to three
// speakers, sees who speaks and lists the bites the conversation produced.
//
// It is meant for -dev mode only: the page takes its identity from query
// parameters (claim.FromHeaderOrQuery) and the endpoints below check nothing.
//
//	GET  /                              the page (embedded: HTML, JS modules, CSS)
//	GET  /demo/static/{file}            the page's assets
//	GET  /demo/events?conversation=X    Server-Sent Events: "bite" and "members"
//	     [&user=U&client=C&name=N]      ... and be listed as a member while open
//	POST /demo/speaking                 {"conversation","user","client","speaking"}
//	GET  /demo/bites/{id}.ogg           one recent bite's Ogg Opus data
//
// Bites come from NATS (subject "bite", beeppb.Bite). The server keeps the
// most recent ones, Ogg Opus only, in a bounded in-memory ring and streams
// each to the pages watching its conversation. A "bite" event's data is
//
//	{"id":7,"conversation":"X","user":"u-…","client":"c-…","start_ms":…,
//	 "duration_ms":1180,"seq":0,"bytes":5012,"url":"/demo/bites/7.ogg",
//	 "name":"Ada"}
//
// (name: the speaker's display name, when the speaker was a member as the
// bite arrived).
//
// and its SSE id is the bite id, so a reconnecting EventSource (which sends
// Last-Event-ID) gets the bites it missed while they are still in the ring.
// A stream that opens without Last-Event-ID first gets the ring's bites of
// its conversation. A "members" event's data is the conversation's members
// now: [{"user","client","name","speaking"}], one per open stream that gave
// user, client and name; members say themselves whether they are speaking.
// A member's stream also gets "slots" events (with Config.Slots): whose
// audio each of its device's receiving slots carries, ["u-…", "", …] in
// m-line order, sent when it changes.
package demo

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
)

//go:embed static
var staticFiles embed.FS

// Config configures a Server.
type Config struct {
	// NATS is the connection bites arrive on (subject "bite"); nil serves the
	// page without a bites list.
	NATS *nats.Conn
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// MaxBites is how many recent bites are kept for playback; 0 means
	// DefaultMaxBites.
	MaxBites int
	// Slots, when set, tells whose audio each receiving slot of a device
	// carries now: the users' ids in the device's m-line order, "" for an
	// idle slot, nil for a device that is not connected. A member's event
	// stream sends it as a "slots" event whenever it changes.
	Slots func(user, client string) []string
}

// Limits.
const (
	// DefaultMaxBites is the ring's size when Config.MaxBites is 0.
	DefaultMaxBites = 256
	// BiteSubject is the NATS subject bites are read from.
	BiteSubject = "bite"
	// FormatOggOpus is the only bite format the demo keeps.
	FormatOggOpus = "ogg-opus"

	maxBiteBytes    = 4 << 20  // a larger bite is not kept
	maxRingBytes    = 64 << 20 // older bites are dropped past this total
	maxStreams      = 512      // open event streams, all conversations
	maxMembers      = 64       // listed members per conversation
	maxConversation = 256      // bytes of a conversation id
	maxName         = 64       // runes of a display name
	maxID           = 256      // bytes of a user or client id
	pendingLimit    = 256      // bites queued for one stream before it is cut
	keepAlive       = 25 * time.Second
	slotsEvery      = 200 * time.Millisecond // how often a member's slots are looked up
	writeTimeout    = 10 * time.Second
)

// bite is one kept bite.
type bite struct {
	ID           uint64 `json:"id"`
	Conversation string `json:"conversation"`
	User         string `json:"user"`
	Client       string `json:"client"`
	StartMS      uint64 `json:"start_ms"`
	DurationMS   uint32 `json:"duration_ms"`
	Seq          uint64 `json:"seq"`
	Bytes        int    `json:"bytes"`
	URL          string `json:"url"`
	// Name is the speaker's display name when the bite arrived, if the
	// speaker was a member then: it stays on the bite after they leave.
	Name string `json:"name,omitempty"`

	data     []byte
	received time.Time
}

// Server serves the demo page and its endpoints.
type Server struct {
	log     *slog.Logger
	slots   func(user, client string) []string
	sub     *nats.Subscription
	ctx     context.Context // canceled by Close: ends every stream
	closeFn context.CancelFunc
	wg      sync.WaitGroup // open event streams
	once    sync.Once

	mu        sync.Mutex
	closed    bool
	ring      []*bite // ring[id % len(ring)]
	oldest    uint64  // smallest id that may still be in the ring
	next      uint64  // id of the next bite (ids start at 1)
	ringBytes int
	streams   map[*stream]struct{}
	members   map[string][]*stream // conversation -> streams that are members, in join order

	ignored uint64 // bites not kept: not ogg-opus, too large or undecodable
}

// New returns a Server, subscribed to bites on cfg.NATS.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxBites < 0 {
		return nil, errors.New("demo: MaxBites must not be negative")
	}
	if cfg.MaxBites == 0 {
		cfg.MaxBites = DefaultMaxBites
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		log:     cfg.Logger.With("component", "demo"),
		slots:   cfg.Slots,
		ctx:     ctx,
		closeFn: cancel,
		ring:    make([]*bite, cfg.MaxBites),
		oldest:  1,
		next:    1,
		streams: make(map[*stream]struct{}),
		members: make(map[string][]*stream),
	}
	if cfg.NATS != nil {
		sub, err := cfg.NATS.Subscribe(BiteSubject, s.onBite)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("demo: subscribe %q: %w", BiteSubject, err)
		}
		s.sub = sub
	}
	return s, nil
}

// Register adds the page, its assets and the /demo/ endpoints to r.
func (s *Server) Register(r *mux.Router) {
	assets, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/demo/static/", http.FileServer(http.FS(assets)))
	r.Handle("/", headers(http.HandlerFunc(s.page))).Methods(http.MethodGet, http.MethodHead)
	r.PathPrefix("/demo/static/").Handler(headers(files)).Methods(http.MethodGet, http.MethodHead)
	r.HandleFunc("/demo/events", s.events).Methods(http.MethodGet)
	r.HandleFunc("/demo/speaking", s.speaking).Methods(http.MethodPost)
	r.HandleFunc("/demo/bites/{id:[0-9]+}.ogg", s.biteData).Methods(http.MethodGet, http.MethodHead)
}

// Close stops reading bites and ends every event stream; it waits for the
// streams' handlers to return. Call it before http.Server.Shutdown (or
// register it with RegisterOnShutdown), which would otherwise wait for the
// open streams. Close is idempotent.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		if s.sub != nil {
			err = s.sub.Unsubscribe()
			if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
				err = nil // closed with the connection already
			}
		}
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.closeFn()
		s.wg.Wait()
	})
	return err
}

// page serves index.html.
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	b, err := staticFiles.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, "page missing", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b)
}

// headers adds the headers every page response gets.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Cache-Control", "no-cache")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob: mediastream:; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		h.ServeHTTP(w, r)
	})
}

// onBite keeps one bite from NATS and hands it to the streams watching its
// conversation. It runs on the subscription's goroutine.
func (s *Server) onBite(m *nats.Msg) {
	var pb beeppb.Bite
	if err := proto.Unmarshal(m.Data, &pb); err != nil || pb.GetKey() == "" {
		s.ignore("undecodable bite message")
		return
	}
	if pb.GetFormat() != FormatOggOpus {
		s.ignore("bite format is not ogg-opus")
		return
	}
	if len(pb.GetData()) > maxBiteBytes {
		s.ignore("bite too large")
		return
	}
	b := &bite{
		Conversation: pb.GetKey(),
		User:         pb.GetUser(),
		Client:       pb.GetClient(),
		StartMS:      pb.GetStartMs(),
		DurationMS:   pb.GetDurationMs(),
		Seq:          pb.GetSeq(),
		Bytes:        len(pb.GetData()),
		data:         pb.GetData(),
		received:     time.Now(),
	}
	if b.StartMS == 0 {
		b.StartMS = pb.GetStart() * 1000
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, st := range s.members[b.Conversation] {
		if st.member.User == b.User {
			b.Name = st.member.Name
			break
		}
	}
	b.ID = s.next
	s.next++
	b.URL = fmt.Sprintf("/demo/bites/%d.ogg", b.ID)
	i := b.ID % uint64(len(s.ring))
	if old := s.ring[i]; old != nil {
		s.ringBytes -= old.Bytes
	}
	s.ring[i] = b
	s.ringBytes += b.Bytes
	if s.next-s.oldest > uint64(len(s.ring)) {
		s.oldest = s.next - uint64(len(s.ring))
	}
	for s.ringBytes > maxRingBytes && s.oldest < b.ID {
		j := s.oldest % uint64(len(s.ring))
		if old := s.ring[j]; old != nil {
			s.ringBytes -= old.Bytes
			s.ring[j] = nil
		}
		s.oldest++
	}
	for st := range s.streams {
		if st.conv == b.Conversation {
			st.pushLocked(b)
		}
	}
}

// ignore counts a bite that is not kept, logging the first one.
func (s *Server) ignore(why string) {
	s.mu.Lock()
	s.ignored++
	n := s.ignored
	s.mu.Unlock()
	if n == 1 {
		s.log.Info("demo ignores a bite (logged once)", "reason", why)
	}
}

// lookupLocked returns the kept bite with id, or nil.
func (s *Server) lookupLocked(id uint64) *bite {
	if id < s.oldest || id >= s.next {
		return nil
	}
	b := s.ring[id%uint64(len(s.ring))]
	if b == nil || b.ID != id {
		return nil
	}
	return b
}

// backlogLocked returns the kept bites of conv with an id above after, oldest
// first.
func (s *Server) backlogLocked(conv string, after uint64) []*bite {
	var out []*bite
	for id := max(s.oldest, after+1); id < s.next; id++ {
		if b := s.lookupLocked(id); b != nil && b.Conversation == conv {
			out = append(out, b)
		}
	}
	return out
}

// biteData serves one bite's Ogg Opus stream.
func (s *Server) biteData(w http.ResponseWriter, r *http.Request) {
	var id uint64
	if _, err := fmt.Sscan(mux.Vars(r)["id"], &id); err != nil {
		http.NotFound(w, r)
		return
	}
	s.mu.Lock()
	b := s.lookupLocked(id)
	s.mu.Unlock()
	if b == nil {
		http.Error(w, "no such bite (it may have been dropped from the demo's ring of recent bites)", http.StatusNotFound)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "audio/ogg; codecs=opus")
	h.Set("Cache-Control", "private, max-age=60")
	h.Set("X-Content-Type-Options", "nosniff")
	name := fmt.Sprintf("bite-%d.ogg", b.ID)
	h.Set("Content-Disposition", `inline; filename="`+name+`"`)
	http.ServeContent(w, r, name, b.received, bytes.NewReader(b.data))
}
