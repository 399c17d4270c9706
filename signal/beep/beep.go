// Package beep serves Beep's backend-webrtc API: GET /connect (WebSocket
// signalling) and POST /join/{conversationid}.
//
// /connect accepts the two framings found in the wild:
//
//   - bare SDP (the seed README's JavaScript): the client sends its offer
//     after ICE gathering completed and gets the answer as bare SDP text,
//     carrying every router candidate;
//   - "offer::<sdp>" (Beep's Android and iOS clients), answered with
//     "answer::<sdp>"; either side may then send "ice::<candidate>", where
//     the candidate is an RTCIceCandidateInit in JSON (a bare
//     "candidate:..." line is accepted too). The answer already carries the
//     candidates gathered when it is sent; later ones follow as ice::.
//
// The socket is closed with a normal close frame once the peer connection is
// established, as the seed says; or with a close frame that gives the reason
// when it fails.
package beep

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"
	"golang.org/x/time/rate"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// Framing prefixes of the mobile clients.
const (
	offerPrefix  = "offer::"
	answerPrefix = "answer::"
	icePrefix    = "ice::"
)

// Config configures a Server.
type Config struct {
	// Rooms holds users, devices and conversations.
	Rooms *room.Manager
	// Permissions decides joins.
	Permissions permissions.Checker
	// Claims extracts the caller's identity.
	Claims claim.Extractor
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// OfferTimeout is how long a new socket may take to send its offer.
	OfferTimeout time.Duration
	// GatherTimeout bounds the wait for the router's ICE candidates before
	// the answer is sent.
	GatherTimeout time.Duration
	// MaxMessage is the largest WebSocket message accepted; a larger one
	// closes the socket with 1009.
	MaxMessage int64
	// CheckOrigin decides whether a WebSocket's Origin is accepted; nil
	// accepts every origin (the claim, not the origin, authenticates).
	CheckOrigin func(r *http.Request) bool
	// JoinRate and JoinBurst limit each user's joins (token bucket); zero
	// JoinRate means no limit.
	JoinRate  rate.Limit
	JoinBurst int
	// MaxPendingPerAddr bounds the /connect sockets of one client address
	// (the IP of r.RemoteAddr) that have not yet sent their offer; past it
	// /connect is answered 429 before the WebSocket upgrade. Behind a
	// reverse proxy every client has the proxy's address. Zero means
	// DefaultMaxPendingPerAddr, negative no bound.
	MaxPendingPerAddr int
	// MaxPending bounds all the /connect sockets that have not yet sent
	// their offer; past it /connect is answered 503 before the upgrade.
	// Zero means DefaultMaxPending, negative no bound.
	MaxPending int
}

// Defaults for zero Config fields.
const (
	DefaultOfferTimeout  = 10 * time.Second
	DefaultGatherTimeout = 5 * time.Second
	DefaultMaxMessage    = 64 << 10

	DefaultMaxPendingPerAddr = 16
	DefaultMaxPending        = 1000
)

// Server handles the Beep endpoints.
type Server struct {
	cfg      Config
	log      *slog.Logger
	upgrader websocket.Upgrader
	joins    *limiter
	pending  *pending // sockets waiting for their offer

	refusedPerAddr atomic.Uint64
	refusedTotal   atomic.Uint64
	refuseLog      throttle.Gate
}

// ConnectStats counts /connect sockets waiting for their offer.
type ConnectStats struct {
	Pending        int    // upgraded (or upgrading), no offer yet
	RefusedPerAddr uint64 // refused past Config.MaxPendingPerAddr (429)
	RefusedTotal   uint64 // refused past Config.MaxPending (503)
}

// ConnectStats returns the counts of sockets waiting for their offer.
func (s *Server) ConnectStats() ConnectStats {
	return ConnectStats{Pending: s.pending.count(), RefusedPerAddr: s.refusedPerAddr.Load(), RefusedTotal: s.refusedTotal.Load()}
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

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.OfferTimeout <= 0 {
		cfg.OfferTimeout = DefaultOfferTimeout
	}
	if cfg.GatherTimeout <= 0 {
		cfg.GatherTimeout = DefaultGatherTimeout
	}
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = DefaultMaxMessage
	}
	if cfg.Claims == nil {
		cfg.Claims = claim.FromHeader
	}
	checkOrigin := cfg.CheckOrigin
	if checkOrigin == nil {
		checkOrigin = func(*http.Request) bool { return true }
	}
	if cfg.JoinRate > 0 && cfg.JoinBurst <= 0 {
		cfg.JoinBurst = 1
	}
	srv := &Server{
		cfg:     cfg,
		log:     cfg.Logger,
		joins:   newLimiter(cfg.JoinRate, cfg.JoinBurst),
		pending: newPending(bound(cfg.MaxPendingPerAddr, DefaultMaxPendingPerAddr), bound(cfg.MaxPending, DefaultMaxPending)),
		upgrader: websocket.Upgrader{
			HandshakeTimeout: 10 * time.Second,
			CheckOrigin:      checkOrigin,
		},
	}
	srv.refuseLog.Every = 10 * time.Second
	return srv
}

// Register adds the routes to r.
func (s *Server) Register(r *mux.Router) {
	r.Handle("/connect", claim.Require(s.cfg.Claims, s.connect)).Methods(http.MethodGet)
	r.Handle("/join/{conversationid}", claim.Require(s.cfg.Claims, s.join)).Methods(http.MethodPost)
}

// validConversationID accepts conversation ids by the rules of user and
// client ids (claim.ValidID): 1 to 256 bytes of printable UTF-8.
func validConversationID(id string) bool { return claim.ValidID(id) }

func (s *Server) join(w http.ResponseWriter, r *http.Request, c claim.Claim) {
	conv := mux.Vars(r)["conversationid"]
	if !validConversationID(conv) {
		http.Error(w, "bad conversation id", http.StatusBadRequest)
		return
	}
	log := s.log.With("user", c.UserID, "conversation", conv)
	if !s.joins.allow(c.UserID, time.Now()) {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many joins: slow down", http.StatusTooManyRequests)
		return
	}
	if err := s.cfg.Permissions.Check(r.Context(), c.UserID, conv); err != nil {
		if errors.Is(err, permissions.ErrDenied) {
			log.Info("join denied")
			http.Error(w, "not a member of this conversation", http.StatusUnauthorized)
			return
		}
		log.Warn("join refused: permission check failed", "err", err)
		http.Error(w, "permission service unavailable", http.StatusServiceUnavailable)
		return
	}
	if err := s.cfg.Rooms.Join(c.UserID, conv); err != nil {
		log.Warn("join refused", "err", err)
		switch {
		case errors.Is(err, room.ErrConversationFull):
			http.Error(w, err.Error(), http.StatusForbidden)
		case errors.Is(err, room.ErrLimit):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		default:
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		}
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request, c claim.Claim) {
	// A socket holds a place from before its upgrade until its offer
	// arrives or it ends.
	addr := clientAddr(r.RemoteAddr)
	release, err := s.pending.acquire(addr)
	if err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, errPendingPerAddr) {
			code = http.StatusTooManyRequests
			s.refusedPerAddr.Add(1)
		} else {
			s.refusedTotal.Add(1)
		}
		if ok, n := s.refuseLog.Allow(time.Now()); ok {
			s.log.Warn("connect refused before upgrade", "user", c.UserID, "addr", addr, "err", err,
				"per_addr", s.pending.perAddr, "total", s.pending.total, "suppressed", n)
		}
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), code)
		return
	}
	defer release()

	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	conn.SetReadLimit(s.cfg.MaxMessage)
	sig := newSocket(conn, s.log.With("user", c.UserID, "client", c.ClientID))
	defer sig.finish()

	// Wait for the offer, reading on this goroutine: an idle socket costs
	// no goroutine but its connection's. ice:: lines may come first.
	var early []webrtc.ICECandidateInit
	var offer string
	framed := false
	_ = conn.SetReadDeadline(time.Now().Add(s.cfg.OfferTimeout))
	for offer == "" {
		m, err := sig.read()
		if err != nil {
			if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
				sig.close(websocket.ClosePolicyViolation, "no offer in time")
			}
			return
		}
		msg, err := parseMessage(m)
		switch {
		case err != nil || (msg.kind == kindICE && len(early) >= 64):
			sig.close(websocket.CloseUnsupportedData, "bad ice:: message")
			return
		case msg.kind == kindICE:
			early = append(early, msg.candidate)
		default:
			offer, framed = msg.sdp, msg.kind == kindFramedOffer
		}
	}
	release()
	_ = conn.SetReadDeadline(time.Time{})
	msgs := sig.readLoop()

	peer, err := s.cfg.Rooms.NewPeer(c)
	if errors.Is(err, room.ErrLimit) {
		sig.log.Info("connection refused", "err", err)
		sig.close(websocket.ClosePolicyViolation, err.Error())
		return
	}
	if errors.Is(err, rtc.ErrSocketLimit) {
		sig.log.Info("connection refused", "err", err)
		sig.close(websocket.CloseTryAgainLater, "router busy: try again later")
		return
	}
	if err != nil {
		sig.log.Error("cannot create peer connection", "err", err)
		sig.close(websocket.CloseInternalServerErr, "cannot create peer connection")
		return
	}
	cands := make(chan webrtc.ICECandidateInit, 32)
	if framed {
		peer.OnCandidate(func(ci webrtc.ICECandidateInit) {
			select {
			case cands <- ci:
			default: // the answer or an earlier ice:: carries enough
			}
		})
	}
	for _, ci := range early {
		_ = peer.AddCandidate(ci)
	}
	if _, err := peer.Answer(offer); err != nil {
		peer.Close()
		if errors.Is(err, rtc.ErrClosed) {
			sig.closeEnded(peer) // replaced meanwhile, say
			return
		}
		if errors.Is(err, rtc.ErrBadOffer) {
			sig.log.Info("offer refused", "err", err)
			sig.close(websocket.CloseUnsupportedData, err.Error())
		} else {
			sig.log.Error("cannot answer offer", "err", err)
			sig.close(websocket.CloseInternalServerErr, "cannot answer offer")
		}
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.GatherTimeout)
	answer := peer.WaitGathered(ctx)
	cancel()
	if framed {
		answer = answerPrefix + answer
	}
	if err := sig.write(answer); err != nil {
		return // the client went away; the peer's connect deadline cleans up
	}
	sent := answer

	unknown := false
	for {
		select {
		case <-peer.Connected():
			sig.close(websocket.CloseNormalClosure, "connected")
			return
		case <-peer.Done():
			sig.closeEnded(peer)
			return
		case ci := <-cands:
			if strings.Contains(sent, ci.Candidate) {
				continue
			}
			b, _ := json.Marshal(ci)
			if err := sig.write(icePrefix + string(b)); err != nil {
				return
			}
		case m, ok := <-msgs:
			if !ok {
				return // socket closed by the client; media may still connect
			}
			msg, err := parseMessage(m)
			if err == nil && msg.kind != kindICE {
				if !unknown {
					sig.log.Info("ignoring unexpected signalling message after the offer", "len", len(m))
					unknown = true
				}
				continue
			}
			if err == nil {
				err = peer.AddCandidate(msg.candidate)
			}
			if err != nil {
				sig.log.Info("bad ICE candidate from client", "err", err)
			}
		}
	}
}

// Kinds of /connect messages.
const (
	kindBareOffer = iota
	kindFramedOffer
	kindICE
)

// message is one parsed /connect message.
type message struct {
	kind      int
	sdp       string                  // offers
	candidate webrtc.ICECandidateInit // kindICE
}

// parseMessage classifies a /connect message: "offer::<sdp>",
// "ice::<candidate>", or anything else, which is taken as a bare SDP offer
// (its validity is checked when it is applied).
func parseMessage(m string) (message, error) {
	switch {
	case strings.HasPrefix(m, offerPrefix):
		return message{kind: kindFramedOffer, sdp: strings.TrimPrefix(m, offerPrefix)}, nil
	case strings.HasPrefix(m, icePrefix):
		ci, err := parseCandidate(strings.TrimPrefix(m, icePrefix))
		if err != nil {
			return message{}, err
		}
		return message{kind: kindICE, candidate: ci}, nil
	default:
		return message{kind: kindBareOffer, sdp: m}, nil
	}
}

// parseCandidate reads an RTCIceCandidateInit in JSON, or a bare candidate
// line. An empty candidate means end of candidates.
func parseCandidate(s string) (webrtc.ICECandidateInit, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "{") {
		var ci webrtc.ICECandidateInit
		if err := json.Unmarshal([]byte(s), &ci); err != nil {
			return ci, err
		}
		return ci, nil
	}
	if s == "" || strings.HasPrefix(s, "candidate:") || strings.HasPrefix(s, "a=candidate:") {
		return webrtc.ICECandidateInit{Candidate: strings.TrimPrefix(s, "a=")}, nil
	}
	return webrtc.ICECandidateInit{}, errors.New("not an ICE candidate")
}

// socket is one /connect WebSocket: one reader goroutine, writes from the
// handler goroutine only.
type socket struct {
	conn    *websocket.Conn
	log     *slog.Logger
	quit    chan struct{} // closed by finish
	done    chan struct{} // closed when the reader ends
	reading bool          // readLoop started
}

func newSocket(conn *websocket.Conn, log *slog.Logger) *socket {
	return &socket{conn: conn, log: log, quit: make(chan struct{}), done: make(chan struct{})}
}

// read returns the next text or binary message.
func (s *socket) read() (string, error) {
	for {
		typ, data, err := s.conn.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				s.log.Info("signalling message too large")
			}
			return "", err
		}
		if typ == websocket.TextMessage || typ == websocket.BinaryMessage {
			return string(data), nil
		}
	}
}

// readLoop reads messages until the socket fails, closes or finishes.
func (s *socket) readLoop() <-chan string {
	msgs := make(chan string)
	s.reading = true
	go func() {
		defer close(s.done)
		defer close(msgs)
		for {
			m, err := s.read()
			if err != nil {
				return
			}
			select {
			case msgs <- m:
			case <-s.quit:
				return
			}
		}
	}()
	return msgs
}

const writeTimeout = 5 * time.Second

func (s *socket) write(m string) error {
	_ = s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.conn.WriteMessage(websocket.TextMessage, []byte(m))
}

// close sends a close frame with code and reason (truncated to fit).
// closeEnded closes the socket of a peer that closed before it connected,
// saying why: a newer connection of the same device replaced it (normal
// closure: the device is connecting again), or its connection failed.
func (s *socket) closeEnded(peer *rtc.Peer) {
	if err := peer.Err(); errors.Is(err, room.ErrReplaced) {
		s.log.Info("connection replaced before it connected")
		s.close(websocket.CloseNormalClosure, err.Error())
		return
	}
	s.close(websocket.CloseInternalServerErr, "peer connection failed")
}

func (s *socket) close(code int, reason string) {
	if len(reason) > 120 {
		reason = reason[:120]
	}
	_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(writeTimeout))
}

// finish closes the socket and waits for the reader to end.
func (s *socket) finish() {
	close(s.quit)
	_ = s.conn.Close()
	if s.reading {
		<-s.done
	}
}
