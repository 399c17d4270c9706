// Package devices implements Beep's device-to-device signalling over
// Server-Sent Events (the former backend-signal service), served by the
// router so that a deployment needs a single service.
//
// Routes (see Register):
//
//	GET  /subscribe                          SSE stream for the caller's device (identity from the claim)
//	GET  /subscribe/{user}/device/{device}   older form; the path must name the caller's own device (403 otherwise)
//	GET  /user/{user}/devices                JSON array of the device ids of user connected now ([] when none)
//	POST /user/{user}/device/{device}        {"data": "...", "event": "..."} delivered to that device
//
// Every route needs a valid claim; a missing or bad one is answered 401
// (the contract's code for POST, used on every route of this package for
// consistency).
//
// An event is written to the stream as
//
//	id: <sender userid>:<sender clientid>
//	event: <event>            (omitted when the poster gave no event)
//	data: <line 1>
//	data: <line 2>            (one data: line per line of data; CR, LF and CRLF all split)
//	<blank line>
//
// and a comment line (": keep-alive") is written every Config.KeepAlive.
// A newer subscription of a device replaces the older one, whose stream ends.
//
// Open streams are bounded per user (Config.MaxStreamsPerUser; past it
// /subscribe is answered 429, except for a device replacing its own older
// stream) and per instance (Config.MaxStreams; 503), with Retry-After; the
// refusals are counted (Service.Streams) and logged at most every 10s.
//
// # Several instances
//
// Instances sharing one NATS (Config.NATS) behave as one service:
//
//   - Delivery: each instance subscribes, for every device connected to it,
//     to the subject <prefix>dev.<user>.<device> (ids escaped, see
//     subjectToken). A POST for a device that is not connected locally is a
//     NATS request on that subject, carrying the sender id and event in
//     headers and the data as payload. The owning instance queues the event
//     and replies "ok" (200) or "full" (404, see overflow below); no
//     responders or no reply within Config.RequestTimeout means the device is
//     not connected (404). Other NATS errors are answered 503.
//   - Presence: every instance publishes on <prefix>presence a snapshot of
//     its local devices every Config.Heartbeat, plus join/leave deltas as
//     they happen and a goodbye on Close. Each instance keeps a table of the
//     other instances' devices; an instance not heard from for 3 of its
//     heartbeats (its interval travels in its messages) is dropped, so the
//     devices of an instance that vanished without a goodbye disappear from
//     the device list within about 3 heartbeats. A starting instance asks
//     the others for an immediate snapshot. Snapshots only list devices
//     whose delivery subscription is in place, and a join is published
//     after that subscription, so a listed device is reachable.
//   - Replacement across instances: a join delta carries the stream's start
//     time; an instance holding an older stream for the same device closes
//     it. This compares wall clocks of two hosts: with clock skew larger than
//     the time between two subscriptions of the same device, both streams may
//     stay open (delivery then goes to whichever instance replies first).
//
// Without NATS (nil Config.NATS) the service works on one instance alone.
//
// # Slow readers
//
// Events are queued per stream (Config.QueueLen); posters never wait for a
// stream's writer. When a stream's queue is full the event is not queued,
// the stream is closed (the client is expected to reconnect, as EventSource
// does) and the poster gets 404, as for a device that is not connected: a
// poster gets 200 only when its event was queued to a live stream. Each
// write to a stream also has a deadline, so a client that stops reading is
// eventually dropped even when nobody posts to it.
package devices

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/throttle"
)

// Defaults for the zero values of Config.
const (
	DefaultKeepAlive      = 25 * time.Second
	DefaultHeartbeat      = 2 * time.Second
	DefaultRequestTimeout = 2 * time.Second
	DefaultMaxData        = 64 << 10
	DefaultQueueLen       = 64
	DefaultSubjectPrefix  = "devsig."
	// DefaultMaxStreamsPerUser and DefaultMaxStreams bound the open
	// /subscribe streams of one user and of the instance.
	DefaultMaxStreamsPerUser = 64
	DefaultMaxStreams        = 10000
)

// expiryBeats is the number of heartbeats after which an instance that has
// not been heard from is dropped from the presence table.
const expiryBeats = 3

// maxIDLen bounds SSE event names, as claim.MaxIDLen bounds user and device
// ids (they end up in NATS subjects, whose control line the server limits).
const maxIDLen = claim.MaxIDLen

// writeTimeout bounds each write to an SSE stream.
const writeTimeout = 30 * time.Second

// Config configures a Service. Zero values take the defaults above.
type Config struct {
	// NATS connects instances; nil runs a single instance. The caller owns
	// the connection: Close does not close it.
	NATS *nats.Conn
	// Claims extracts the caller's identity; nil means claim.FromHeader.
	Claims claim.Extractor
	// Logger receives structured logs; nil means slog.Default(). Message
	// data and claims headers are never logged.
	Logger *slog.Logger
	// KeepAlive is the interval of the keep-alive comment on streams.
	KeepAlive time.Duration
	// Heartbeat is the interval of presence snapshots between instances;
	// an instance silent for 3 of its heartbeats is dropped.
	Heartbeat time.Duration
	// RequestTimeout bounds a cross-instance delivery.
	RequestTimeout time.Duration
	// MaxData bounds the POST body in bytes (and so the data it carries);
	// larger bodies are answered 413.
	MaxData int
	// QueueLen is the number of events queued per stream before the stream
	// is closed as too slow.
	QueueLen int
	// SubjectPrefix prefixes every NATS subject; a missing trailing dot is
	// added.
	SubjectPrefix string
	// InstanceID names this instance in presence messages; it must be unique
	// among the instances sharing NATS. Empty means a random id.
	InstanceID string
	// MaxStreamsPerUser bounds the open /subscribe streams of one user on
	// this instance; past it a new stream is answered 429 (a subscription
	// replacing one of the user's connected devices is still accepted, as
	// it ends the older stream). Zero means DefaultMaxStreamsPerUser,
	// negative no bound.
	MaxStreamsPerUser int
	// MaxStreams bounds the open /subscribe streams of this instance; past
	// it a new stream is answered 503. Zero means DefaultMaxStreams,
	// negative no bound.
	MaxStreams int
}

// Service serves device signalling. Create it with New, add its routes with
// Register, and end it with Close.
type Service struct {
	nc        *nats.Conn
	claims    claim.Extractor
	log       *slog.Logger
	keepAlive time.Duration
	heartbeat time.Duration
	expiry    time.Duration
	reqTO     time.Duration
	maxData   int
	queueLen  int
	prefix    string
	instance  string
	maxUser   int // streams per user; <= 0 no bound
	maxTotal  int // streams in all; <= 0 no bound

	refusedUser  atomic.Uint64 // streams refused past maxUser
	refusedTotal atomic.Uint64 // streams refused past maxTotal
	refuseLog    throttle.Gate

	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	bg      sync.WaitGroup // presence loop
	streams sync.WaitGroup // SSE handlers
	kick    chan struct{}  // wakes the presence loop

	mu          sync.Mutex
	closed      bool
	local       map[string]map[string]*entry // user → device → entry
	remote      map[string]*remoteInstance   // instance id → its devices
	outbox      []presenceMsg                // presence messages to publish, in order
	presenceSub *nats.Subscription
	natsFailing bool
	open        int            // stream handlers admitted and not yet returned
	openBy      map[string]int // the same by user
}

// entry is a locally connected device.
type entry struct {
	user, device string
	cur          *stream            // the current (newest) stream
	sub          *nats.Subscription // delivery subscription, nil without NATS
	ready        bool               // the subscription attempt is over
}

// stream is one SSE connection.
type stream struct {
	user, device string
	since        int64 // start, Unix ns (wall clock, compared across instances)
	queue        chan []byte
	ctx          context.Context
	cancel       context.CancelCauseFunc
}

// Reasons a stream ends, as context causes.
var (
	errReplaced       = errors.New("replaced by a newer subscription")
	errReplacedRemote = errors.New("replaced by a newer subscription on another instance")
	errOverflow       = errors.New("queue overflow: client too slow")
	errServiceClosed  = errors.New("service closed")
	errStreamsPerUser = errors.New("too many event streams for this user")
	errStreamsTotal   = errors.New("too many event streams on this instance")
)

// New returns a running Service.
func New(cfg Config) (*Service, error) {
	s := &Service{
		nc:        cfg.NATS,
		claims:    cfg.Claims,
		log:       cfg.Logger,
		keepAlive: positive(cfg.KeepAlive, DefaultKeepAlive),
		heartbeat: positive(cfg.Heartbeat, DefaultHeartbeat),
		reqTO:     positive(cfg.RequestTimeout, DefaultRequestTimeout),
		maxData:   cfg.MaxData,
		queueLen:  cfg.QueueLen,
		prefix:    cfg.SubjectPrefix,
		instance:  cfg.InstanceID,
		kick:      make(chan struct{}, 1),
		local:     make(map[string]map[string]*entry),
		remote:    make(map[string]*remoteInstance),
		openBy:    make(map[string]int),
		maxUser:   limit(cfg.MaxStreamsPerUser, DefaultMaxStreamsPerUser),
		maxTotal:  limit(cfg.MaxStreams, DefaultMaxStreams),
	}
	s.refuseLog.Every = 10 * time.Second
	if s.claims == nil {
		s.claims = claim.FromHeader
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.maxData <= 0 {
		s.maxData = DefaultMaxData
	}
	if s.queueLen <= 0 {
		s.queueLen = DefaultQueueLen
	}
	if s.prefix == "" {
		s.prefix = DefaultSubjectPrefix
	}
	if !strings.HasSuffix(s.prefix, ".") {
		s.prefix += "."
	}
	if strings.ContainsAny(s.prefix, " \t\r\n*>") || strings.HasPrefix(s.prefix, ".") || strings.Contains(s.prefix, "..") {
		return nil, fmt.Errorf("devices: invalid subject prefix %q", cfg.SubjectPrefix)
	}
	if s.instance == "" {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("devices: instance id: %w", err)
		}
		s.instance = hex.EncodeToString(b[:])
	}
	s.expiry = expiryBeats * s.heartbeat
	s.log = s.log.With("component", "devices", "instance", s.instance)
	s.ctx, s.cancel = context.WithCancel(context.Background())

	if s.nc != nil {
		if mp := s.nc.MaxPayload(); mp > 0 && int64(s.maxData)+4096 > mp {
			s.cancel()
			return nil, fmt.Errorf("devices: MaxData %d does not fit the NATS max payload %d", s.maxData, mp)
		}
		sub, err := s.nc.Subscribe(s.presenceSubject(), s.onPresence)
		if err != nil {
			s.cancel()
			return nil, fmt.Errorf("devices: subscribe presence: %w", err)
		}
		s.presenceSub = sub
		s.mu.Lock()
		s.announceLocked(presenceMsg{Op: opSync})
		s.announceLocked(s.snapshotLocked())
		s.mu.Unlock()
		s.bg.Add(1)
		go s.presenceLoop()
	}
	s.log.Info("device signalling started", "nats", s.nc != nil)
	return s, nil
}

// limit is n, def when n is zero, and 0 (no bound) when n is negative.
func limit(n, def int) int {
	switch {
	case n == 0:
		return def
	case n < 0:
		return 0
	}
	return n
}

// StreamStats counts /subscribe streams.
type StreamStats struct {
	Open           int    // stream handlers running now
	RefusedPerUser uint64 // refused past Config.MaxStreamsPerUser (429)
	RefusedTotal   uint64 // refused past Config.MaxStreams (503)
}

// Streams returns the stream counts.
func (s *Service) Streams() StreamStats {
	s.mu.Lock()
	open := s.open
	s.mu.Unlock()
	return StreamStats{Open: open, RefusedPerUser: s.refusedUser.Load(), RefusedTotal: s.refusedTotal.Load()}
}

func positive(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Register adds the service's routes to r.
func (s *Service) Register(r *mux.Router) {
	r.HandleFunc("/subscribe", s.requireClaim(s.handleSubscribe)).Methods(http.MethodGet)
	r.HandleFunc("/subscribe/{user}/device/{device}", s.requireClaim(s.handleSubscribeLegacy)).Methods(http.MethodGet)
	r.HandleFunc("/user/{user}/devices", s.requireClaim(s.handleDevices)).Methods(http.MethodGet)
	r.HandleFunc("/user/{user}/device/{device}", s.requireClaim(s.handlePost)).Methods(http.MethodPost)
}

// Close ends all streams and NATS subscriptions, tells the other instances
// that this one is gone, and waits for the service's goroutines and stream
// handlers to return. It does not close the NATS connection.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var subs []*nats.Subscription
	for _, devs := range s.local {
		for _, e := range devs {
			e.cur.cancel(errServiceClosed)
			if e.sub != nil {
				subs = append(subs, e.sub)
			}
		}
	}
	s.local = make(map[string]map[string]*entry)
	s.remote = make(map[string]*remoteInstance)
	if s.nc != nil {
		s.outbox = append(s.outbox, presenceMsg{Op: opBye})
		subs = append(subs, s.presenceSub)
	}
	s.mu.Unlock()

	var errs []error
	for _, sub := range subs {
		if err := unsubscribe(sub); err != nil {
			errs = append(errs, err)
		}
	}
	s.cancel() // the presence loop publishes the goodbye, then returns
	s.bg.Wait()
	s.streams.Wait()
	if s.nc != nil && !s.nc.IsClosed() {
		if err := s.nc.FlushTimeout(time.Second); err != nil {
			s.log.Debug("flush on close", "err", err)
		}
	}
	s.log.Info("device signalling closed")
	return errors.Join(errs...)
}

func unsubscribe(sub *nats.Subscription) error {
	if sub == nil {
		return nil
	}
	err := sub.Unsubscribe()
	if err == nil || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrBadSubscription) {
		return nil
	}
	return err
}

// requireClaim runs h with the caller's claim, answering 401 without a
// valid one.
func (s *Service) requireClaim(h claim.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := s.claims(r)
		if err == nil {
			// claim's own Extractors check the ids; Config.Claims may be another.
			err = c.Valid()
		}
		if err != nil {
			s.log.Debug("request without a valid claim", "path", r.URL.Path, "err", err)
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		h(w, r, c)
	}
}

// validID is claim.ValidID, the one id check of every front-end; the name
// stays for the handlers in sse.go.
func validID(id string) bool { return claim.ValidID(id) }

// validEvent reports whether ev can be an SSE event name (empty means none).
func validEvent(ev string) bool {
	return len(ev) <= maxIDLen && !strings.ContainsAny(ev, "\r\n\x00")
}

// snapshotLocked lists the local devices as a presence snapshot.
func (s *Service) snapshotLocked() presenceMsg {
	devs := []presenceDev{}
	for u, ds := range s.local {
		for d, e := range ds {
			if e.ready {
				devs = append(devs, presenceDev{User: u, Device: d, Since: e.cur.since})
			}
		}
	}
	return presenceMsg{Op: opHeartbeat, Devices: devs}
}
