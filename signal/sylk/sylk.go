// Package sylk serves SylkServer's WebRTC gateway API (the sylkRTC
// WebSocket protocol of sylkrtc.js, the Sylk apps' client library) on
// GET /webrtcgateway/ws: accounts and their registration against local
// accounts, 1:1 calls between registered accounts, and video rooms, all on
// the router's media core (package rtc) and room layer (package room), so
// that their audio goes through the pipeline like Beep's.
//
// The wire contract is ../shared/contracts/sylk.md (docs/sylk.md for
// operators). In short: subprotocol sylkRTC-2 (sylkRTC-1 with the seed's
// names for accounts and registration), one JSON object per text frame,
// every request answered by ack or error carrying its transaction, pings
// answered, the router's candidates always inside the SDP it sends (it
// never trickles), the client's trickled candidates always acked and
// queued until they can be applied, feed offers with a=ssrc in every
// m-section.
//
// Concurrency: each connection reads and handles its requests in order on
// its HTTP handler goroutine and writes from one writer goroutine fed by a
// bounded queue; events from elsewhere (another connection's call, a room
// event) are queued without blocking, and a connection that cannot keep up
// is closed. Locks: call.mu before conn.mu; roomSession.mu before
// Server.mu; none is held across a network wait.
package sylk

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/room"
)

// Path is the endpoint of the API, as SylkServer serves it.
const Path = "/webrtcgateway/ws"

// Config configures a Server. Zero numbers take the defaults below; a
// negative bound means no bound.
type Config struct {
	// Rooms holds the participants and conversations of calls and rooms.
	Rooms *room.Manager
	// Permissions admits accounts to video rooms (user = the account,
	// conversation = the room URI); an error refuses (fail closed).
	Permissions permissions.Checker
	// AccountsFile is the path of the local accounts file (LoadAccounts);
	// empty: no local accounts, so registration is refused unless Dev.
	AccountsFile string
	// Dev lets any account register without a password check when there
	// is no AccountsFile (logged loudly). Never in production.
	Dev bool
	// NATS, if set, is the connection of a cluster of routers (package
	// cluster): videoroom-invite reaches the invitees registered on the
	// other routers on it too (registrations are each router's), through
	// InviteSubject. Nil: invitations reach this router's sockets only.
	NATS *nats.Conn
	// SIPRegistrar, when set, is the SIP registrar that decides and keeps
	// registrations instead of the local accounts:
	// sip:host[:port][;transport=udp]. account-register then sends a real
	// REGISTER for the account, answering the digest challenge from its
	// HA1, refreshes it, and unregisters it when the client does, its
	// socket closes or the Server closes.
	SIPRegistrar string
	// SIPTimeout bounds one SIP transaction (408 Request Timeout past it).
	SIPTimeout time.Duration
	// SIPExpires is the registration lifetime asked of the registrar; a
	// registration is refreshed at half the lifetime granted.
	SIPExpires time.Duration
	// SIPMaxInFlight bounds the REGISTER transactions in flight; past it a
	// registration fails with 503.
	SIPMaxInFlight int
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// CheckOrigin decides whether a WebSocket's Origin is accepted; nil
	// accepts every origin.
	CheckOrigin func(r *http.Request) bool
	// MaxMessage is the largest message accepted; a larger one closes the
	// socket with 1009.
	MaxMessage int64
	// GatherTimeout bounds the wait for the router's ICE candidates before
	// an SDP is sent.
	GatherTimeout time.Duration
	// PermissionTimeout bounds one permission check.
	PermissionTimeout time.Duration
	// RingTimeout ends a call nobody answered (408 Request Timeout).
	RingTimeout time.Duration
	// IdleTimeout closes a socket that sent nothing (sylkrtc.js pings
	// every 5 s) for this long.
	IdleTimeout time.Duration
	// MaxConnections bounds the open sockets (503 past it).
	MaxConnections int
	// MaxAccountsPerConnection bounds the accounts added on one socket.
	MaxAccountsPerConnection int
	// MaxRegistrationsPerAccount bounds the sockets on which one account
	// is registered at once (each rings on a call).
	MaxRegistrationsPerAccount int
	// MaxCallsPerAccount bounds the calls, ringing or up, one account
	// takes part in; a callee past it is busy (486).
	MaxCallsPerAccount int
	// MaxRoomsPerConnection bounds the video rooms one socket is in.
	MaxRoomsPerConnection int
	// MaxFeedsPerRoom bounds the feeds one room session has attached.
	MaxFeedsPerRoom int
	// MaxRooms bounds the video rooms of the process.
	MaxRooms int
	// MaxRoomParticipants bounds the participants of one video room.
	MaxRoomParticipants int
	// SendQueue bounds the messages waiting to be written to one socket;
	// a socket that falls this far behind is closed.
	SendQueue int
}

// Defaults of Config.
const (
	DefaultMaxMessage                 = 64 << 10
	DefaultGatherTimeout              = 5 * time.Second
	DefaultPermissionTimeout          = 5 * time.Second
	DefaultRingTimeout                = 60 * time.Second
	DefaultIdleTimeout                = 60 * time.Second
	DefaultMaxConnections             = 10000
	DefaultMaxAccountsPerConnection   = 16
	DefaultMaxRegistrationsPerAccount = 16
	DefaultMaxCallsPerAccount         = 4
	DefaultMaxRoomsPerConnection      = 4
	DefaultMaxFeedsPerRoom            = 32
	DefaultMaxRooms                   = 1000
	DefaultMaxRoomParticipants        = 50
	DefaultSendQueue                  = 256
)

// Stats counts what the Server did and refused since it started.
type Stats struct {
	// Connections is the number of open sockets.
	Connections int64
	// Refused counts sockets refused before the upgrade: no compatible
	// subprotocol (406), too many (503), shutting down.
	Refused uint64
	// BadMessages counts messages answered with an error without being
	// handled: invalid JSON, no sylkrtc, unknown or invalid requests.
	BadMessages uint64
	// SlowClosed counts sockets closed for falling SendQueue behind.
	SlowClosed uint64
	// Registered and RegisterFailed count registrations.
	Registered, RegisterFailed uint64
	// Calls counts calls that rang; CallsAnswered those answered.
	Calls, CallsAnswered uint64
	// RoomJoins counts video room sessions admitted.
	RoomJoins uint64
	// Feeds counts feeds attached.
	Feeds uint64
	// Panics counts requests whose handler panicked (answered "Internal
	// error", the socket closed).
	Panics uint64
	// Throttled counts room requests refused for coming too fast (a
	// socket's configure, invite, raised hands and mute everyone).
	Throttled uint64
}

// counters are the Stats counters.
type counters struct {
	refused, bad, slow, registered, regFailed, calls, answered, joins, feeds, panics atomic.Uint64
	throttled                                                                        atomic.Uint64
}

// Server serves the sylkRTC API.
type Server struct {
	cfg      Config
	log      *slog.Logger
	upgrader websocket.Upgrader
	accounts atomic.Pointer[Accounts]
	sip      registrar // nil: local accounts decide registrations
	id       string    // names this server in the invitations it sends
	invites  *nats.Subscription
	count    counters
	open     atomic.Int64

	badLog, slowLog throttle.Gate

	mu        sync.Mutex
	closed    bool
	conns     map[*conn]struct{} // upgraded sockets
	upgrading int                // sockets in their handshake
	regs      map[string][]*conn // registered account → its sockets, oldest first
	calls     map[string]int     // account → calls it takes part in
	rooms     map[string]*vroom  // room URI → room
	wg        sync.WaitGroup     // socket handlers
}

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

// New returns a Server, with its local accounts loaded.
func New(cfg Config) (*Server, error) {
	if cfg.Rooms == nil {
		return nil, errors.New("sylk: Config.Rooms is nil")
	}
	if cfg.Permissions == nil {
		return nil, errors.New("sylk: Config.Permissions is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = DefaultMaxMessage
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.GatherTimeout, DefaultGatherTimeout},
		{&cfg.PermissionTimeout, DefaultPermissionTimeout},
		{&cfg.RingTimeout, DefaultRingTimeout},
		{&cfg.IdleTimeout, DefaultIdleTimeout},
		{&cfg.SIPTimeout, DefaultSIPTimeout},
		{&cfg.SIPExpires, DefaultSIPExpires},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	cfg.MaxConnections = bound(cfg.MaxConnections, DefaultMaxConnections)
	cfg.MaxAccountsPerConnection = bound(cfg.MaxAccountsPerConnection, DefaultMaxAccountsPerConnection)
	cfg.MaxRegistrationsPerAccount = bound(cfg.MaxRegistrationsPerAccount, DefaultMaxRegistrationsPerAccount)
	cfg.MaxCallsPerAccount = bound(cfg.MaxCallsPerAccount, DefaultMaxCallsPerAccount)
	cfg.MaxRoomsPerConnection = bound(cfg.MaxRoomsPerConnection, DefaultMaxRoomsPerConnection)
	cfg.MaxFeedsPerRoom = bound(cfg.MaxFeedsPerRoom, DefaultMaxFeedsPerRoom)
	cfg.MaxRooms = bound(cfg.MaxRooms, DefaultMaxRooms)
	cfg.MaxRoomParticipants = bound(cfg.MaxRoomParticipants, DefaultMaxRoomParticipants)
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = DefaultSendQueue
	}
	checkOrigin := cfg.CheckOrigin
	if checkOrigin == nil {
		checkOrigin = func(*http.Request) bool { return true }
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Logger, // the caller labels it (cmd/router: api=sylk)
		upgrader: websocket.Upgrader{
			HandshakeTimeout: 10 * time.Second,
			CheckOrigin:      checkOrigin,
			Subprotocols:     []string{ProtocolV2, ProtocolV1},
		},
		conns: make(map[*conn]struct{}),
		regs:  make(map[string][]*conn),
		calls: make(map[string]int),
		rooms: make(map[string]*vroom),
	}
	s.badLog.Every = 10 * time.Second
	s.slowLog.Every = 10 * time.Second
	if cfg.AccountsFile != "" {
		a, err := LoadAccounts(cfg.AccountsFile)
		if err != nil {
			return nil, err
		}
		s.accounts.Store(a)
		s.log.Info("sylk local accounts loaded", "file", cfg.AccountsFile, "accounts", a.Len())
	}
	switch {
	case cfg.SIPRegistrar != "":
		r, err := newSIPRegistrar(cfg.SIPRegistrar, cfg.SIPTimeout, cfg.SIPExpires, cfg.SIPMaxInFlight, s.log)
		if err != nil {
			return nil, err
		}
		s.sip = r
	case cfg.AccountsFile != "":
	case cfg.Dev:
		s.log.Warn("DEV MODE: sylk accepts every account's registration without a password check")
	default:
		s.log.Info("sylk registration disabled: no local accounts file")
	}
	if cfg.NATS != nil {
		s.id = newID()
		sub, err := cfg.NATS.Subscribe(InviteSubject, s.onInvite)
		if err != nil {
			if s.sip != nil {
				_ = s.sip.Close()
			}
			return nil, fmt.Errorf("sylk: subscribe to invitations: %w", err)
		}
		s.invites = sub
	}
	return s, nil
}

// Register adds the endpoint to r.
func (s *Server) Register(r *mux.Router) {
	r.HandleFunc(Path, s.serve).Methods(http.MethodGet)
}

// ReloadAccounts reads the accounts file again (on SIGHUP). On an error
// the accounts in use stay. Registrations the new file no longer accepts
// (account gone, password changed) end with registration-state failed.
func (s *Server) ReloadAccounts() error {
	if s.cfg.AccountsFile == "" {
		return nil
	}
	a, err := LoadAccounts(s.cfg.AccountsFile)
	if err != nil {
		s.log.Error("sylk accounts not reloaded: keeping the previous ones", "err", err)
		return err
	}
	s.accounts.Store(a)
	s.log.Info("sylk local accounts reloaded", "file", s.cfg.AccountsFile, "accounts", a.Len())
	s.mu.Lock()
	type reg struct {
		c   *conn
		aor string
	}
	var stale []reg
	for aor, cs := range s.regs {
		for _, c := range cs {
			if c.sipRegistered(aor) {
				continue // the registrar decides it
			}
			if ha1, ok := c.ha1(aor); !ok || !a.Check(aor, ha1) {
				stale = append(stale, reg{c, aor})
			}
		}
	}
	s.mu.Unlock()
	for _, r := range stale {
		s.unregister(r.c, r.aor)
		r.c.setRegistered(r.aor, false)
		r.c.registrationState(r.aor, "failed", "403 Forbidden (account changed)")
		s.log.Info("sylk registration ended: the accounts file no longer accepts it", "account", r.aor)
	}
	return nil
}

// Stats returns the Server's counts.
func (s *Server) Stats() Stats {
	return Stats{
		Connections:    s.open.Load(),
		Refused:        s.count.refused.Load(),
		BadMessages:    s.count.bad.Load(),
		SlowClosed:     s.count.slow.Load(),
		Registered:     s.count.registered.Load(),
		RegisterFailed: s.count.regFailed.Load(),
		Calls:          s.count.calls.Load(),
		CallsAnswered:  s.count.answered.Load(),
		RoomJoins:      s.count.joins.Load(),
		Feeds:          s.count.feeds.Load(),
		Panics:         s.count.panics.Load(),
		Throttled:      s.count.throttled.Load(),
	}
}

// Close closes every socket, which ends their calls and rooms, and waits
// for their handlers. New sockets are refused from then on. Call it
// before closing the room Manager.
func (s *Server) Close() {
	if s.invites != nil {
		_ = s.invites.Unsubscribe()
	}
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.ws.Close()
	}
	s.wg.Wait() // their SIP registrations are unregistered by then
	if s.sip != nil {
		if err := s.sip.Close(); err != nil {
			s.log.Warn("sylk SIP registrar closed with an error", "err", err)
		}
	}
}

// chooseProtocol returns the subprotocol to speak, sylkRTC-2 first, or ""
// when the client offers neither.
func chooseProtocol(offered []string) string {
	switch {
	case slices.Contains(offered, ProtocolV2):
		return ProtocolV2
	case slices.Contains(offered, ProtocolV1):
		return ProtocolV1
	}
	return ""
}

// serve upgrades one socket and runs it until it closes.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	proto := chooseProtocol(websocket.Subprotocols(r))
	if proto == "" {
		s.count.refused.Add(1)
		http.Error(w, "No compatible protocol specified", http.StatusNotAcceptable)
		return
	}
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		s.count.refused.Add(1)
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
		return
	case s.cfg.MaxConnections > 0 && len(s.conns)+s.upgrading >= s.cfg.MaxConnections:
		s.mu.Unlock()
		s.count.refused.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, fmt.Sprintf("too many connections (%d)", s.cfg.MaxConnections), http.StatusServiceUnavailable)
		return
	}
	s.upgrading++
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	// The upgrader answers with the subprotocol it picks from its own
	// list, in order (sylkRTC-2 first: proto). Naming it again in a header
	// here sent it twice, and Chromium refuses such a handshake.
	ws, err := s.upgrader.Upgrade(w, r, nil)
	s.mu.Lock()
	s.upgrading--
	closed := s.closed
	s.mu.Unlock()
	if err != nil {
		return // the upgrader has answered
	}
	c := &conn{s: s, ws: ws, id: rand.Text(), proto: proto, quit: make(chan struct{}), out: make(chan []byte, s.cfg.SendQueue),
		roomRequests: rate.NewLimiter(roomRequestRate, roomRequestBurst),
		accounts:     make(map[string]*account), sessions: make(map[string]any)}
	c.log = s.log.With("conn", c.id, "protocol", proto, "addr", r.RemoteAddr)
	s.mu.Lock()
	if closed || s.closed {
		s.mu.Unlock()
		_ = ws.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	s.open.Add(1)
	defer s.open.Add(-1)
	c.run()
}

// newID returns an opaque random id (session ids the router chooses,
// publisher ids, call ids).
func newID() string { return rand.Text() }

// registered returns the sockets on which aor is registered.
func (s *Server) registered(aor string) []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.regs[aor])
}

// register records aor registered on c; false when the account is
// registered on MaxRegistrationsPerAccount sockets already.
func (s *Server) register(c *conn, aor string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.regs[aor]
	if slices.Contains(cs, c) {
		return true
	}
	if max := s.cfg.MaxRegistrationsPerAccount; max > 0 && len(cs) >= max {
		return false
	}
	s.regs[aor] = append(cs, c)
	return true
}

// unregister forgets aor's registration on c.
func (s *Server) unregister(c *conn, aor string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := slices.DeleteFunc(s.regs[aor], func(d *conn) bool { return d == c })
	if len(cs) == 0 {
		delete(s.regs, aor)
	} else {
		s.regs[aor] = cs
	}
}

// takeCall counts a call of aor; false past MaxCallsPerAccount.
func (s *Server) takeCall(aor string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max := s.cfg.MaxCallsPerAccount; max > 0 && s.calls[aor] >= max {
		return false
	}
	s.calls[aor]++
	return true
}

// releaseCall gives back a count of takeCall.
func (s *Server) releaseCall(aor string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls[aor]--; s.calls[aor] <= 0 {
		delete(s.calls, aor)
	}
}

// local reports whether aor is an account of this router: a local
// account, or any account in Dev without an accounts file.
func (s *Server) local(aor string) bool {
	a := s.accounts.Load()
	return a.Has(aor) || a == nil && s.cfg.Dev
}

// checkRegistration decides a registration of aor with ha1 against the
// local accounts: "" when it is accepted, else the reason ("<code>
// <text>"). With a SIP registrar (Server.sip) conn.sipRegister decides
// instead.
func (s *Server) checkRegistration(aor, ha1 string) string {
	a := s.accounts.Load()
	switch {
	case a == nil && s.cfg.Dev:
		s.log.Warn("DEV MODE: sylk account registered without a password check", "account", aor)
		return ""
	case a == nil:
		return "403 Forbidden (" + errNoAccounts.Error() + ")"
	case a.Check(aor, ha1):
		return ""
	}
	return "403 Forbidden"
}
