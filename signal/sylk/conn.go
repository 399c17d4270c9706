package sylk

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"
	"golang.org/x/time/rate"

	"github.com/beepvoice/router/rtc"
)

// writeTimeout bounds the write of one message.
const writeTimeout = 10 * time.Second

// conn is one socket.
type conn struct {
	s     *Server
	ws    *websocket.Conn
	id    string
	proto string
	log   *slog.Logger

	out  chan []byte   // to the writer
	quit chan struct{} // closed once the socket is torn down
	wg   sync.WaitGroup

	// regMu orders the registration changes of this socket (register,
	// unregister, remove, a SIP outcome, teardown) so that a SIP outcome
	// never registers an account unregistered meanwhile. Taken before mu
	// and Server.mu.
	regMu sync.Mutex

	// roomRequests bounds the socket's room requests, which fan out to
	// the room's members on every router.
	roomRequests *rate.Limiter

	mu       sync.Mutex
	closed   bool
	accounts map[string]*account // by address of record
	// sessions are what the client names by id: *callSide (calls),
	// *roomSession (conferences) and *feed (feeds).
	sessions map[string]any
}

// account is an account added on a socket.
type account struct {
	aor         string
	ha1         string
	displayName string
	registered  bool
	sip         *sipReg // the account's SIP registration, running or done
}

// message is one outgoing JSON object.
type message map[string]any

// run sends the ready event, then reads and handles requests until the
// socket fails or closes; it then ends everything the socket owned.
func (c *conn) run() {
	c.ws.SetReadLimit(c.s.cfg.MaxMessage)
	c.wg.Add(1)
	go c.writer()
	c.log.Info("sylk connection opened")
	if c.proto == ProtocolV1 {
		c.send(message{"sylkrtc": "event", "event": "ready"})
	} else {
		c.send(message{"sylkrtc": "ready-event"})
	}
read:
	for {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		typ, data, err := c.ws.ReadMessage()
		if err != nil {
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				c.log.Info("sylk message too large: closing", "max", c.s.cfg.MaxMessage)
			case websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway):
			default:
				c.log.Debug("sylk socket read ended", "err", err)
			}
			break read
		}
		if typ != websocket.TextMessage && typ != websocket.BinaryMessage {
			continue
		}
		if !c.handle(data) {
			break read
		}
	}
	c.teardown()
	c.log.Info("sylk connection closed")
}

// writer writes the queued messages until the socket is torn down.
func (c *conn) writer() {
	defer c.wg.Done()
	for {
		select {
		case b := <-c.out:
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
				_ = c.ws.Close() // the reader fails and tears down
				return
			}
		case <-c.quit:
			return
		}
	}
}

// send queues m for the client without blocking; a socket whose queue is
// full is closed (its client is not reading).
func (c *conn) send(m message) {
	b, err := json.Marshal(m)
	if err != nil {
		c.log.Error("sylk: cannot encode a message", "err", err)
		return
	}
	select {
	case <-c.quit:
		return
	default:
	}
	select {
	case c.out <- b:
	default:
		c.s.count.slow.Add(1)
		if ok, n := c.s.slowLog.Allow(time.Now()); ok {
			c.log.Warn("sylk client not reading: closing its socket", "queue", cap(c.out), "suppressed", n)
		}
		_ = c.ws.Close()
	}
}

// ack answers a request.
func (c *conn) ack(tx string) { c.send(message{"sylkrtc": "ack", "transaction": tx}) }

// fail answers a request with an error; tx may be empty (a message that
// was no request).
func (c *conn) fail(tx, text string) {
	m := message{"sylkrtc": "error", "error": text}
	if tx != "" {
		m["transaction"] = tx
	}
	c.send(m)
}

// handle handles one message; false closes the socket (a handler
// panicked: what it held is in an unknown state).
func (c *conn) handle(data []byte) (ok bool) {
	r, err := ParseRequest(c.proto, data)
	if err != nil {
		var pe *ParseError
		errors.As(err, &pe)
		c.s.count.bad.Add(1)
		if !errors.Is(err, ErrNotSupported) {
			if ok, n := c.s.badLog.Allow(time.Now()); ok {
				c.log.Info("sylk request refused", "err", err, "len", len(data), "suppressed", n)
			}
		}
		c.fail(pe.Transaction, err.Error())
		return true
	}
	defer func() {
		if p := recover(); p != nil {
			c.s.count.panics.Add(1)
			c.log.Error("sylk request handler panicked: closing the socket", "request", r.Type, "panic", p, "stack", string(debug.Stack()))
			c.fail(r.Transaction, "Internal error")
			ok = false
		}
	}()
	switch r.Type {
	case reqPing:
		c.ack(r.Transaction)
	case reqAccountAdd:
		c.accountAdd(r)
	case reqAccountRemove:
		c.accountRemove(r)
	case reqAccountRegister:
		c.accountRegister(r)
	case reqAccountUnregister:
		c.accountUnregister(r)
	case reqSessionCreate:
		c.callCreate(r)
	case reqSessionAnswer:
		c.callAnswer(r)
	case reqSessionTrickle:
		c.callTrickle(r)
	case reqSessionTerminate:
		c.callTerminate(r)
	case reqRoomJoin:
		c.roomJoin(r)
	case reqRoomLeave:
		c.roomLeave(r)
	case reqRoomTrickle:
		c.roomTrickle(r)
	case reqFeedAttach:
		c.feedAttach(r)
	case reqFeedAnswer:
		c.feedAnswer(r)
	case reqFeedDetach:
		c.feedDetach(r)
	case reqRoomConfigure, reqRoomInvite, reqRoomToggleHand, reqRoomMuteAudio:
		if !c.roomRequests.Allow() {
			c.s.count.throttled.Add(1)
			c.fail(r.Transaction, "too many room requests: slow down")
			return true
		}
		switch r.Type {
		case reqRoomConfigure:
			c.roomConfigure(r)
		case reqRoomInvite:
			c.roomInvite(r)
		case reqRoomToggleHand:
			c.roomToggleHand(r)
		default:
			c.roomMuteAudio(r)
		}
	default: // validators and this switch disagree
		c.fail(r.Transaction, "unknown request "+r.Type)
	}
	return true
}

// goroutine runs f on a goroutine the teardown waits for, unless the
// socket is torn down already.
func (c *conn) goroutine(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		f()
	}()
	return true
}

// teardown ends what the socket owned: its calls end (the other sides are
// told), its room sessions leave, its registrations end. Then the writer
// stops and the socket closes.
func (c *conn) teardown() {
	c.regMu.Lock()
	c.mu.Lock()
	c.closed = true
	sessions := make([]any, 0, len(c.sessions))
	for _, v := range c.sessions {
		sessions = append(sessions, v)
	}
	var registered []string
	for aor, a := range c.accounts {
		if a.registered {
			registered = append(registered, aor)
		}
		if a.sip != nil {
			a.sip.stop() // its goroutine unregisters; waited for below
			a.sip = nil
		}
	}
	c.mu.Unlock()
	for _, aor := range registered {
		c.s.unregister(c, aor)
	}
	c.regMu.Unlock()
	for _, v := range sessions {
		switch v := v.(type) {
		case *callSide:
			v.call.gone(v)
		case *roomSession:
			v.end(false)
		}
	}
	close(c.quit)
	_ = c.ws.Close()
	c.wg.Wait()
}

// addSession records a session id of the client; false when the id is in
// use on this socket or the socket is torn down.
func (c *conn) addSession(id string, v any) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	if _, taken := c.sessions[id]; taken {
		return false
	}
	c.sessions[id] = v
	return true
}

// hasSession reports whether id is in use.
func (c *conn) hasSession(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.sessions[id]
	return ok
}

// session returns what id names on this socket, or nil.
func (c *conn) session(id string) any {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessions[id]
}

// dropSession forgets id if it still names v.
func (c *conn) dropSession(id string, v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sessions[id] == v {
		delete(c.sessions, id)
	}
}

// countSessions counts the sessions for which is says true.
func (c *conn) countSessions(is func(any) bool) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.sessions {
		if is(v) {
			n++
		}
	}
	return n
}

// ha1 returns the HA1 aor was added with on this socket.
func (c *conn) ha1(aor string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.accounts[aor]
	if !ok {
		return "", false
	}
	return a.ha1, true
}

// setRegistered marks aor registered or not on this socket.
func (c *conn) setRegistered(aor string, registered bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.accounts[aor]; ok {
		a.registered = registered
	}
}

// registrationState sends a registration-state event (account_event
// registration_state with data on sylkRTC-1).
func (c *conn) registrationState(aor, state, reason string) {
	if c.proto == ProtocolV1 {
		data := message{"state": state}
		if reason != "" {
			data["reason"] = reason
		}
		c.send(message{"sylkrtc": "account_event", "account": aor, "event": "registration_state", "data": data})
		return
	}
	m := message{"sylkrtc": "account-event", "account": aor, "event": "registration-state", "state": state}
	if reason != "" {
		m["reason"] = reason
	}
	c.send(m)
}

func (c *conn) accountAdd(r *Request) {
	aor := normalizeAOR(r.Account)
	c.mu.Lock()
	_, dup := c.accounts[aor]
	full := c.s.cfg.MaxAccountsPerConnection > 0 && len(c.accounts) >= c.s.cfg.MaxAccountsPerConnection
	if !dup && !full {
		c.accounts[aor] = &account{aor: aor, ha1: r.Password, displayName: r.DisplayName}
	}
	c.mu.Unlock()
	switch {
	case dup:
		c.fail(r.Transaction, "account already added")
	case full:
		c.fail(r.Transaction, "too many accounts on this connection")
	default:
		c.ack(r.Transaction)
	}
}

func (c *conn) accountRemove(r *Request) {
	aor := normalizeAOR(r.Account)
	c.regMu.Lock()
	c.mu.Lock()
	a, ok := c.accounts[aor]
	delete(c.accounts, aor)
	if ok && a.sip != nil {
		a.sip.stop()
		a.sip = nil
	}
	c.mu.Unlock()
	if ok && a.registered {
		c.s.unregister(c, aor)
	}
	c.regMu.Unlock()
	if !ok {
		c.fail(r.Transaction, "unknown account")
		return
	}
	c.ack(r.Transaction)
}

func (c *conn) accountRegister(r *Request) {
	aor := normalizeAOR(r.Account)
	ha1, ok := c.ha1(aor)
	if !ok {
		c.fail(r.Transaction, "unknown account")
		return
	}
	c.ack(r.Transaction)
	c.registrationState(aor, "registering", "")
	if c.s.sip != nil {
		c.sipRegister(aor, ha1)
		return
	}
	reason := c.s.checkRegistration(aor, ha1)
	if reason == "" && !c.s.register(c, aor) {
		reason = "403 Forbidden (too many registrations of this account)"
	}
	if reason != "" {
		c.s.count.regFailed.Add(1)
		c.log.Info("sylk registration refused", "account", aor, "reason", reason)
		c.registrationState(aor, "failed", reason)
		return
	}
	c.setRegistered(aor, true)
	c.s.count.registered.Add(1)
	c.log.Info("sylk account registered", "account", aor)
	c.registrationState(aor, "registered", "")
}

func (c *conn) accountUnregister(r *Request) {
	aor := normalizeAOR(r.Account)
	c.regMu.Lock()
	c.mu.Lock()
	a, ok := c.accounts[aor]
	if ok {
		a.registered = false
		if a.sip != nil {
			a.sip.stop() // its goroutine sends the REGISTER with Expires: 0
			a.sip = nil
		}
	}
	c.mu.Unlock()
	if ok {
		c.s.unregister(c, aor)
	}
	c.regMu.Unlock()
	if !ok {
		c.fail(r.Transaction, "unknown account")
		return
	}
	c.ack(r.Transaction)
}

// sipRegister registers aor with the SIP registrar on a goroutine of the
// socket; the outcome comes as registration-state. A registration already
// running or done is kept (registered is said again).
func (c *conn) sipRegister(aor, ha1 string) {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	c.mu.Lock()
	a, ok := c.accounts[aor]
	if !ok || c.closed {
		c.mu.Unlock()
		return
	}
	if a.sip != nil {
		registered := a.registered
		c.mu.Unlock()
		if registered {
			c.registrationState(aor, "registered", "")
		}
		return // running: its outcome is coming
	}
	ctx, stop := context.WithCancel(context.Background())
	reg := &sipReg{stop: stop}
	a.sip = reg
	c.mu.Unlock()
	started := c.goroutine(func() {
		defer stop()
		c.s.sip.Register(ctx, aor, ha1, func(ok bool, reason string) { c.sipOutcome(aor, reg, ok, reason) })
	})
	if !started {
		stop()
	}
}

// sipOutcome applies an outcome of reg, aor's SIP registration on this
// socket, unless reg was stopped meanwhile (unregistered, removed, socket
// closed).
func (c *conn) sipOutcome(aor string, reg *sipReg, ok bool, reason string) {
	c.regMu.Lock()
	defer c.regMu.Unlock()
	c.mu.Lock()
	a := c.accounts[aor]
	current := a != nil && a.sip == reg && !c.closed
	c.mu.Unlock()
	if !current {
		return
	}
	if ok && !c.s.register(c, aor) {
		ok, reason = false, "403 Forbidden (too many registrations of this account)"
	}
	if !ok {
		reg.stop()
		c.mu.Lock()
		a.sip, a.registered = nil, false
		c.mu.Unlock()
		c.s.unregister(c, aor)
		c.s.count.regFailed.Add(1)
		c.log.Info("sylk registration refused", "account", aor, "reason", reason)
		c.registrationState(aor, "failed", reason)
		return
	}
	c.setRegistered(aor, true)
	c.s.count.registered.Add(1)
	c.log.Info("sylk account registered with the SIP registrar", "account", aor)
	c.registrationState(aor, "registered", "")
}

// sipRegistered reports whether aor's registration on this socket is the
// SIP registrar's.
func (c *conn) sipRegistered(aor string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.accounts[aor]
	return ok && a.sip != nil
}

// Reasons an account may not call or join a room.
var (
	errNoAccount     = errors.New("unknown account: add it first")
	errNotRegistered = errors.New("account not registered")
)

// authenticated returns the account aor of this socket if it may call and
// join rooms: registered, or added with an HA1 the local accounts accept
// (or any, in Dev without an accounts file).
func (c *conn) authenticated(aor string) (account, error) {
	c.mu.Lock()
	a, ok := c.accounts[aor]
	var cp account
	if ok {
		cp = *a
	}
	c.mu.Unlock()
	if !ok {
		return account{}, errNoAccount
	}
	if cp.registered {
		return cp, nil
	}
	if accts := c.s.accounts.Load(); accts.Check(aor, cp.ha1) || accts == nil && c.s.cfg.Dev {
		return cp, nil
	}
	return account{}, errNotRegistered
}

// addCandidates adds trickled candidates to peer; refusals are logged
// (throttled) and counted by the media core, never answered with an error:
// an error reply tears the client's call down.
func (c *conn) addCandidates(peer *rtc.Peer, cands []Candidate) {
	for _, cand := range cands {
		if err := peer.AddCandidate(cand.init()); err != nil {
			if ok, n := c.s.badLog.Allow(time.Now()); ok {
				c.log.Info("sylk trickled candidate refused", "err", err, "suppressed", n)
			}
		}
	}
}

// candidateInits converts trickled candidates for pion.
func candidateInits(cands []Candidate) []webrtc.ICECandidateInit {
	out := make([]webrtc.ICECandidateInit, 0, len(cands))
	for _, c := range cands {
		if c.Candidate != "" {
			out = append(out, c.init())
		}
	}
	return out
}
