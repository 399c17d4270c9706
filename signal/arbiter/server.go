// Package arbiter serves Arbiter's API on the router, so that Arbiter's
// browser client, unchanged, holds its video calls here: the HTTP room API
// (GET /getRoomId, PATCH /claimRoom, PUT or POST /createRoom) and the
// WebSocket signalling gateway (GET /arbiter/ws). The router is the room
// store, the gateway and the SFU in one.
//
// Rooms live in a NATS JetStream key-value bucket (see store.go): they
// survive a restart and every router on the same NATS sees the same rooms.
// A claim is atomic (compare-and-set). Without JetStream the room API
// answers 503 and the gateway refuses identify; the rest of the router works.
//
// The gateway follows the wire contract of Arbiter's client
// (../shared/contracts/arbiter.md): client frames are {"action","data"};
// the router's frames are the bare data object, switched on "type". A
// socket is bound to the participant and room of its identify. The client
// offers its producer connection (audio, video and the negotiated data
// channels chat, id 100, and features, id 110) and trickles its
// candidates; the router offers one consumer connection per other
// participant with media (room.Feed), carrying that participant's audio
// and video, and tells the client the remote participant's features on the
// features channel once the consumer connects. Chat messages are relayed
// to the room's other participants. A socket that closes, or a producer
// that fails, takes its participant out: its connections close and the
// others get {"type":"clientDisconnect","clientId":…}.
//
// Arbiter rooms are open to whoever knows them, as in the original: no
// X-User-Claim is needed. Put the routes behind an authenticating proxy to
// restrict them (docs/arbiter.md).
package arbiter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/internal/origin"
	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/room"
)

// Config configures a Server.
type Config struct {
	// Rooms is the room layer the calls run on.
	Rooms *room.Manager
	// NATS is the connection to the NATS whose JetStream holds the rooms.
	NATS *nats.Conn
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// Bucket is the key-value bucket of the rooms; "" means DefaultBucket.
	Bucket string
	// Replicas is the bucket's replica count (a JetStream cluster); zero
	// means 1.
	Replicas int
	// MaxRooms bounds the rooms of the store (createRoom answers 503 past
	// it); zero means DefaultMaxRooms, negative no bound. Routers sharing a
	// store each check it against their view, so racing creations on
	// several routers may pass it by a few.
	MaxRooms int
	// IdleRooms is how many free rooms are kept ready: made at start, and
	// again after each claim that leaves fewer (within MaxRooms).
	IdleRooms int
	// Origins are the browser origins allowed to use the API and the
	// gateway (CORS and the WebSocket Origin check); empty or "*" allows
	// every origin, as the original did.
	Origins []string
	// MaxParticipants bounds the participants of one room on this router;
	// zero means DefaultMaxParticipants, negative no bound.
	MaxParticipants int
	// MaxMessage is the largest WebSocket message accepted; a larger one
	// closes the socket with 1009. Zero means DefaultMaxMessage.
	MaxMessage int64
	// IdentifyTimeout closes a socket that has not identified by then;
	// zero means DefaultIdentifyTimeout.
	IdentifyTimeout time.Duration
	// GatherTimeout bounds the wait for the router's candidates of a
	// consumer offer; zero means DefaultGatherTimeout.
	GatherTimeout time.Duration
	// MaxPending bounds the sockets that have not identified yet; past it
	// the upgrade is answered 503. Zero means DefaultMaxPending, negative
	// no bound.
	MaxPending int
	// ConversationPrefix is put before a room id to make the id of its
	// conversation, the key of its bites. "" (the default): the bites of a
	// room are keyed by the room id itself.
	ConversationPrefix string
	// StoreTimeout bounds each request to the store; zero means
	// DefaultStoreTimeout.
	StoreTimeout time.Duration
	// StoreRetry is how often a store that could not be opened is tried
	// again; zero means DefaultStoreRetry.
	StoreRetry time.Duration
}

// Defaults for zero Config fields.
const (
	DefaultBucket          = "arbiter_rooms"
	DefaultMaxRooms        = 10000
	DefaultMaxParticipants = 50
	DefaultMaxMessage      = 64 << 10
	DefaultIdentifyTimeout = 10 * time.Second
	DefaultGatherTimeout   = 5 * time.Second
	DefaultMaxPending      = 1000
	DefaultStoreTimeout    = 5 * time.Second
	DefaultStoreRetry      = 10 * time.Second
)

// bound is n, def when n is zero, and 0 (no bound) when n is negative.
func bound(n, def int) int {
	switch {
	case n == 0:
		return def
	case n < 0:
		return 0
	}
	return n
}

// Server serves the Arbiter room API and gateway.
type Server struct {
	cfg      Config
	log      *slog.Logger
	origins  origin.Policy
	any      bool // every origin is allowed
	upgrader websocket.Upgrader

	storeMu  sync.Mutex
	st       *store // nil until open
	storeErr error  // why st is nil
	createMu sync.Mutex

	quit chan struct{}
	bg   sync.WaitGroup // background goroutines (store retry)

	mu       sync.Mutex
	closed   bool
	pending  int
	sessions map[*session]struct{}
	rooms    map[string]map[string]*session // room id → participant id → session
	wg       sync.WaitGroup                 // sessions

	stats counters

	// clientLog and storeLog throttle what clients can make the router log
	// (refusals, hostile sockets) and store failures, which may come with
	// every request while NATS is away.
	clientLog, storeLog throttle.Gate
}

// logThrottled logs msg at level through gate: once per gate interval,
// with the count of those held back.
func (s *Server) logThrottled(log *slog.Logger, gate *throttle.Gate, level slog.Level, msg string, args ...any) {
	ok, n := gate.Allow(time.Now())
	if !ok {
		return
	}
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Log(context.Background(), level, msg, args...)
}

// counters are the Server's cumulative counts.
type counters struct {
	badMessages, refusedPending, chatDropped, slowSockets atomic.Uint64
}

// Stats are the Server's counts.
type Stats struct {
	// Sockets and Pending count the open sockets, and those not identified.
	Sockets, Pending int
	// Participants counts the identified sockets.
	Participants int
	// BadMessages counts client messages answered with an error.
	BadMessages uint64
	// RefusedPending counts upgrades refused past MaxPending.
	RefusedPending uint64
	// ChatDropped counts chat and features messages not relayed (too
	// large, too many, or a receiver too far behind).
	ChatDropped uint64
	// SlowSockets counts sockets closed because they did not read what
	// the router sent.
	SlowSockets uint64
}

// Stats returns the current counts.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := Stats{Sockets: len(s.sessions), Pending: s.pending}
	for _, r := range s.rooms {
		st.Participants += len(r)
	}
	s.mu.Unlock()
	st.BadMessages = s.stats.badMessages.Load()
	st.RefusedPending = s.stats.refusedPending.Load()
	st.ChatDropped = s.stats.chatDropped.Load()
	st.SlowSockets = s.stats.slowSockets.Load()
	return st
}

// New returns a Server. It opens the room store (and keeps trying in the
// background if it cannot, answering 503 meanwhile), and makes the
// IdleRooms free rooms that are missing.
func New(cfg Config) (*Server, error) {
	if cfg.Rooms == nil {
		return nil, errors.New("arbiter: Config.Rooms is nil")
	}
	if cfg.NATS == nil {
		return nil, errors.New("arbiter: Config.NATS is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.IdleRooms < 0 {
		return nil, errors.New("arbiter: IdleRooms is negative")
	}
	cfg.MaxRooms = bound(cfg.MaxRooms, DefaultMaxRooms)
	if cfg.MaxRooms > 0 && cfg.IdleRooms > cfg.MaxRooms {
		return nil, fmt.Errorf("arbiter: IdleRooms (%d) is more than MaxRooms (%d)", cfg.IdleRooms, cfg.MaxRooms)
	}
	cfg.MaxParticipants = bound(cfg.MaxParticipants, DefaultMaxParticipants)
	cfg.MaxPending = bound(cfg.MaxPending, DefaultMaxPending)
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = DefaultMaxMessage
	}
	if cfg.IdentifyTimeout <= 0 {
		cfg.IdentifyTimeout = DefaultIdentifyTimeout
	}
	if cfg.GatherTimeout <= 0 {
		cfg.GatherTimeout = DefaultGatherTimeout
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = DefaultStoreTimeout
	}
	if cfg.StoreRetry <= 0 {
		cfg.StoreRetry = DefaultStoreRetry
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger,
		quit:     make(chan struct{}),
		sessions: make(map[*session]struct{}),
		rooms:    make(map[string]map[string]*session),
	}
	s.any = len(cfg.Origins) == 0
	for _, o := range cfg.Origins {
		if o == "*" {
			s.any = true
		}
	}
	s.origins = origin.New(cfg.Origins)
	s.clientLog.Every = 10 * time.Second
	s.storeLog.Every = 10 * time.Second
	s.upgrader = websocket.Upgrader{HandshakeTimeout: 10 * time.Second, CheckOrigin: s.originAllowed}
	if err := s.openStore(); err != nil {
		s.log.Warn("arbiter: room store unavailable: the Arbiter API answers 503 until it is", "err", err, "retry", cfg.StoreRetry)
		s.bg.Add(1)
		go s.retryStore()
	}
	return s, nil
}

// originAllowed reports whether r's Origin may use the API: any origin by
// default, else requests without Origin, the router's own and the listed.
func (s *Server) originAllowed(r *http.Request) bool {
	return s.any || s.origins.Check(r)
}

// openStore opens the store, repairs it and makes the idle rooms.
func (s *Server) openStore() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.StoreTimeout)
	defer cancel()
	st, err := openStore(ctx, s.cfg.NATS, s.cfg.Bucket, s.cfg.Replicas, s.cfg.MaxRooms, s.log)
	if err != nil {
		s.storeMu.Lock()
		s.storeErr = err
		s.storeMu.Unlock()
		return err
	}
	if n, err := st.repair(ctx); err != nil {
		s.log.Warn("arbiter: repairing the room store", "err", err)
	} else if n > 0 {
		s.log.Info("arbiter: gave back rooms left taken without their path", "rooms", n)
	}
	s.storeMu.Lock()
	s.st, s.storeErr = st, nil
	s.storeMu.Unlock()
	rooms, free := st.counts()
	s.log.Info("arbiter: room store open", "bucket", s.cfg.Bucket, "rooms", rooms, "free", free)
	s.replenish(ctx)
	return nil
}

// retryStore tries to open the store every StoreRetry until it opens or
// the Server closes.
func (s *Server) retryStore() {
	defer s.bg.Done()
	t := time.NewTicker(s.cfg.StoreRetry)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case <-t.C:
			if s.openStore() == nil {
				return
			}
		}
	}
}

// store returns the open store, or why there is none.
func (s *Server) store() (*store, error) {
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	if s.st == nil {
		if s.storeErr == nil {
			return nil, ErrStoreUnavailable
		}
		return nil, s.storeErr
	}
	return s.st, nil
}

// replenish makes free rooms until IdleRooms are free (in the view).
func (s *Server) replenish(ctx context.Context) {
	st, err := s.store()
	if err != nil || s.cfg.IdleRooms == 0 {
		return
	}
	s.createMu.Lock()
	defer s.createMu.Unlock()
	for {
		if _, free := st.counts(); free >= s.cfg.IdleRooms {
			return
		}
		if _, err := st.create(ctx); err != nil {
			s.log.Warn("arbiter: could not make an idle room", "err", err)
			return
		}
	}
}

// Register adds the routes to r: the room API at the root and the gateway
// at /arbiter/ws.
func (s *Server) Register(r *mux.Router) {
	r.Handle("/getRoomId", s.cors(s.getRoomID)).Methods(http.MethodGet)
	r.Handle("/claimRoom", s.cors(s.claimRoom)).Methods(http.MethodPatch)
	r.Handle("/createRoom", s.cors(s.createRoom)).Methods(http.MethodPut, http.MethodPost)
	r.Handle("/arbiter/ws", http.HandlerFunc(s.gateway)).Methods(http.MethodGet)
	// Preflights, and other methods answered 405 with CORS and JSON.
	for _, p := range []string{"/getRoomId", "/claimRoom", "/createRoom"} {
		r.Handle(p, s.cors(methodNotAllowed))
	}
}

// Paths are the paths the Server serves.
var Paths = []string{"/getRoomId", "/claimRoom", "/createRoom", "/arbiter/ws"}

// Bypass returns a handler that serves the Arbiter routes itself and
// passes every other request to next. Use it, instead of Register, as the
// outermost handler when next applies a CORS policy of its own (the
// router's ALLOWED_ORIGINS): that policy would answer the Arbiter client's
// preflights from the customer's origin itself, without the Arbiter
// methods, and the browser would block claimRoom.
func (s *Server) Bypass(next http.Handler) http.Handler {
	own := mux.NewRouter()
	s.Register(own)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, p := range Paths {
			if r.URL.Path == p {
				own.ServeHTTP(w, r)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// Close closes every socket (their participants leave), waits for them
// and stops the store's watcher.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.quit)
	sessions := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()
	for _, ss := range sessions {
		ss.shut()
	}
	s.wg.Wait()
	s.bg.Wait()
	s.storeMu.Lock()
	st := s.st
	s.st, s.storeErr = nil, errors.New("arbiter: closed")
	s.storeMu.Unlock()
	if st != nil {
		st.close()
	}
}
