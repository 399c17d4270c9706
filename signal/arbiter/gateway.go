package arbiter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"
	"golang.org/x/time/rate"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// The negotiated data channels of Arbiter's producer connection.
const (
	chatLabel     = "chat"
	chatID        = 100
	featuresLabel = "features"
	featuresID    = 110
)

// Bounds of one socket.
const (
	// outQueue bounds the messages waiting to be written to a socket; a
	// client that lets it fill is closed.
	outQueue = 256
	// writeTimeout bounds one write to a socket.
	writeTimeout = 5 * time.Second
	// pingEvery is how often an identified socket is pinged; a socket
	// from which nothing (not even a pong) came for readIdle is closed.
	pingEvery = 30 * time.Second
	readIdle  = 75 * time.Second
	// msgRate and msgBurst limit a client's messages (a join sends a
	// handful of candidates per connection); past them it is closed.
	msgRate  = 50
	msgBurst = 200
	// chatMax bounds a relayed chat or features message; chatRate and
	// chatBurst limit a client's; chatBuffered bounds what may wait in a
	// receiver's channel. Past any of them the message is dropped and
	// counted.
	chatMax      = 16 << 10
	chatRate     = 20
	chatBurst    = 50
	chatBuffered = 1 << 20
)

// session is one gateway socket. Its handler goroutine reads the client's
// messages (through a reader goroutine) and does what they ask; a writer
// goroutine writes the router's; consumer goroutines offer the feeds.
type session struct {
	s    *Server
	conn *websocket.Conn
	log  *slog.Logger

	out     chan outbound
	closing chan struct{} // closed by shut
	once    sync.Once

	pendingHeld bool // counts in Server.pending (handler goroutine)
	flushing    bool // a close frame is queued: let the writer send it (handler goroutine)
	pubDone     <-chan struct{}
	limiter     *rate.Limiter

	mu        sync.Mutex
	id        string // identify's, once identified
	roomID    string
	part      *room.Participant
	pub       *rtc.Peer
	answered  bool
	prodMid   string // the mid of the producer offer's first m-line
	chat      *webrtc.DataChannel
	features  *webrtc.DataChannel
	featOpen  bool
	consumers map[string]*consumer // by remote participant id
	ending    bool
	wg        sync.WaitGroup // consumer goroutines

	chatLimit *rate.Limiter
}

// consumer is the feed of one remote participant to this session's client.
type consumer struct {
	remote    string
	feed      *room.Feed // nil until made
	offered   bool
	answered  bool
	announce  bool // its features are due on the features channel
	announced bool
}

// outbound is a message for the writer: data, or a close frame.
type outbound struct {
	data   []byte
	code   int
	reason string
}

// gateway serves GET /arbiter/ws.
func (s *Server) gateway(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		writeJSON(w, http.StatusForbidden, message{"origin not allowed"})
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeJSON(w, http.StatusServiceUnavailable, message{"shutting down"})
		return
	}
	if s.cfg.MaxPending > 0 && s.pending >= s.cfg.MaxPending {
		s.mu.Unlock()
		s.stats.refusedPending.Add(1)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, message{"too many sockets waiting to identify"})
		return
	}
	s.pending++
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	ss := &session{
		s:         s,
		log:       s.log.With("arbiter_addr", r.RemoteAddr),
		out:       make(chan outbound, outQueue),
		closing:   make(chan struct{}),
		consumers: make(map[string]*consumer),
		limiter:   rate.NewLimiter(msgRate, msgBurst),
		chatLimit: rate.NewLimiter(chatRate, chatBurst),
	}
	ss.pendingHeld = true
	defer ss.releasePending()
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	conn.SetReadLimit(s.cfg.MaxMessage)
	ss.conn = conn
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	ss.run()
}

// releasePending stops counting the socket as waiting to identify.
func (ss *session) releasePending() {
	if !ss.pendingHeld {
		return
	}
	ss.pendingHeld = false
	ss.s.mu.Lock()
	ss.s.pending--
	ss.s.mu.Unlock()
}

// run serves the socket until it closes, then takes its participant out.
func (ss *session) run() {
	msgs := make(chan []byte)
	readerDone := make(chan struct{})
	writerDone := make(chan struct{})
	go ss.read(msgs, readerDone)
	go ss.write(writerDone)
	defer func() {
		if ss.flushing { // what is queued, then the close frame
			t := time.NewTimer(writeTimeout)
			select {
			case <-writerDone:
			case <-t.C:
			}
			t.Stop()
		}
		ss.shut()
		<-readerDone
		<-writerDone
		ss.finish()
	}()
	identify := time.NewTimer(ss.s.cfg.IdentifyTimeout)
	defer identify.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return
			}
			if !ss.limiter.Allow() {
				ss.s.logThrottled(ss.log, &ss.s.clientLog, slog.LevelInfo, "arbiter: closing a socket that sends too many messages")
				ss.closeWith(websocket.ClosePolicyViolation, "too many messages")
				return
			}
			if !ss.handle(m) {
				ss.closeWith(websocket.CloseInternalServerErr, "cannot serve this socket")
				return
			}
			if ss.pendingHeld && ss.identified() {
				ss.releasePending()
				identify.Stop()
			}
		case <-identify.C:
			if !ss.identified() {
				ss.closeWith(websocket.ClosePolicyViolation, "no identify in time")
				return
			}
		case <-ss.pubDone:
			ss.sendError("producer connection closed: " + errText(ss.pubErr()))
			ss.closeWith(websocket.CloseGoingAway, "producer connection closed")
			return
		case <-ss.closing:
			return
		}
	}
}

// errText is err's text, or "closed".
func errText(err error) string {
	if err == nil {
		return "closed"
	}
	return err.Error()
}

// pubErr is why the producer closed.
func (ss *session) pubErr() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pub == nil {
		return nil
	}
	return ss.pub.Err()
}

// read passes the socket's messages to msgs until it fails or closes.
func (ss *session) read(msgs chan<- []byte, done chan<- struct{}) {
	defer close(done)
	defer close(msgs)
	ss.conn.SetPongHandler(func(string) error {
		return ss.conn.SetReadDeadline(time.Now().Add(readIdle))
	})
	for {
		_ = ss.conn.SetReadDeadline(time.Now().Add(readIdle))
		typ, data, err := ss.conn.ReadMessage()
		if err != nil {
			if errors.Is(err, websocket.ErrReadLimit) {
				ss.s.logThrottled(ss.log, &ss.s.clientLog, slog.LevelInfo, "arbiter: message over MAX_MESSAGE: closing the socket", "max", ss.s.cfg.MaxMessage)
			}
			return
		}
		if typ != websocket.TextMessage {
			continue
		}
		select {
		case msgs <- data:
		case <-ss.closing:
			return
		}
	}
}

// write writes the queued messages and pings until the socket closes.
func (ss *session) write(done chan<- struct{}) {
	defer close(done)
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	for {
		select {
		case <-ss.closing:
			return
		case <-ping.C:
			if err := ss.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				ss.shut()
				return
			}
		case o := <-ss.out:
			if o.data == nil {
				reason := o.reason
				if len(reason) > 120 {
					reason = reason[:120]
				}
				_ = ss.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(o.code, reason), time.Now().Add(writeTimeout))
				ss.shut()
				return
			}
			_ = ss.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if err := ss.conn.WriteMessage(websocket.TextMessage, o.data); err != nil {
				ss.shut()
				return
			}
		}
	}
}

// shut closes the socket at once; the reader and writer end.
func (ss *session) shut() {
	ss.once.Do(func() {
		close(ss.closing)
		if ss.conn != nil {
			_ = ss.conn.Close()
		}
	})
}

// enqueue queues o for the writer; a client that does not read what it is
// sent is closed.
func (ss *session) enqueue(o outbound) {
	select {
	case <-ss.closing:
		return
	default:
	}
	select {
	case ss.out <- o:
	default:
		ss.s.stats.slowSockets.Add(1)
		ss.s.logThrottled(ss.log, &ss.s.clientLog, slog.LevelInfo, "arbiter: closing a socket that does not read its messages")
		ss.shut()
	}
}

// send queues v, in JSON, for the client.
func (ss *session) send(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		ss.log.Error("arbiter: cannot encode a message", "err", err)
		return
	}
	ss.enqueue(outbound{data: b})
}

// sendError tells the client what was wrong, in a message its client
// ignores, and counts it.
func (ss *session) sendError(msg string) {
	ss.s.stats.badMessages.Add(1)
	ss.send(errorMessage{Type: typeError, Message: msg})
}

// closeWith closes the socket with a close frame, after what is queued.
// Only the handler goroutine calls it.
func (ss *session) closeWith(code int, reason string) {
	ss.flushing = true
	ss.enqueue(outbound{code: code, reason: reason})
}

// identified reports whether the socket has identified.
func (ss *session) identified() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.part != nil
}

// finish takes the participant out, once the socket is closed: its
// producer and consumers close, the feeds of it end, the others are told
// (clientDisconnect), and every goroutine of the session ends.
func (ss *session) finish() {
	ss.mu.Lock()
	ss.ending = true
	part, id, roomID := ss.part, ss.id, ss.roomID
	ss.mu.Unlock()
	s := ss.s
	s.mu.Lock()
	delete(s.sessions, ss)
	if part != nil {
		if r := s.rooms[roomID]; r[id] == ss {
			delete(r, id)
			if len(r) == 0 {
				delete(s.rooms, roomID)
			}
		}
	}
	s.mu.Unlock()
	if part != nil {
		part.Leave()
	}
	ss.wg.Wait()
}

// handle does what one client message asks. It returns false when the
// socket must close.
func (ss *session) handle(m []byte) bool {
	req, err := parseRequest(m)
	if err != nil {
		ss.sendError(err.Error())
		return true
	}
	switch req.action {
	case actionIdentify:
		ss.identify(req)
		return true
	default:
		return ss.handshake(req)
	}
}

// identify binds the socket to a participant of a claimed room.
func (ss *session) identify(req request) {
	d := req.identify
	if ss.identified() {
		ss.sendError("already identified")
		return
	}
	switch {
	case d.Type == "sfu":
		ss.sendError("identify: type sfu is refused: the router is the SFU")
		return
	case d.Type != "client":
		ss.sendError("identify: type must be client")
		return
	case !claim.ValidID(d.ID):
		ss.sendError("identify: bad id")
		return
	case req.roomID == "":
		ss.sendError("identify: no roomId (get the room with getRoomId first)")
		return
	}
	s := ss.s
	st, err := s.store()
	if err != nil {
		ss.sendError("room store unavailable")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	rec, found, err := st.room(ctx, req.roomID)
	cancel()
	switch {
	case err != nil:
		s.logThrottled(ss.log, &s.storeLog, slog.LevelWarn, "arbiter: room store failed", "op", "identify", "err", err)
		ss.sendError("room store unavailable")
		return
	case !found:
		ss.sendError("identify: room not found")
		return
	case rec.URLPath == "":
		ss.sendError("identify: room not claimed")
		return
	}

	// Reserve the participant's place in the room, then enter it.
	s.mu.Lock()
	r := s.rooms[req.roomID]
	switch {
	case s.closed:
		s.mu.Unlock()
		ss.sendError("shutting down")
		return
	case r[d.ID] != nil:
		s.mu.Unlock()
		ss.sendError("identify: id already in this room")
		return
	case s.cfg.MaxParticipants > 0 && len(r) >= s.cfg.MaxParticipants:
		s.mu.Unlock()
		ss.sendError(fmt.Sprintf("identify: room full (%d participants)", s.cfg.MaxParticipants))
		return
	}
	if r == nil {
		r = make(map[string]*session)
		s.rooms[req.roomID] = r
	}
	r[d.ID] = ss
	s.mu.Unlock()

	// ss.mu is held across Enter so that the watch, which may be called as
	// soon as Enter has added the participant, finds it set.
	ss.mu.Lock()
	part, err := s.cfg.Rooms.Enter(s.cfg.ConversationPrefix+req.roomID, room.Identity{ID: d.ID, Claim: claim.Claim{UserID: d.ID, ClientID: "arbiter"}}, ss.watch)
	if err != nil {
		ss.mu.Unlock()
		s.mu.Lock()
		if s.rooms[req.roomID][d.ID] == ss {
			delete(s.rooms[req.roomID], d.ID)
			if len(s.rooms[req.roomID]) == 0 {
				delete(s.rooms, req.roomID)
			}
		}
		s.mu.Unlock()
		s.logThrottled(ss.log, &s.clientLog, slog.LevelInfo, "arbiter: identify refused", "room", req.roomID, "id", d.ID, "err", err)
		ss.sendError("identify: " + err.Error())
		return
	}
	ss.id, ss.roomID, ss.part = d.ID, req.roomID, part
	ss.log = ss.log.With("room", req.roomID, "participant", d.ID)
	ss.mu.Unlock()
	ss.log.Info("arbiter: participant identified")

	// Consumers of those who publish already, on this router or another
	// of its cluster; later ones come as events.
	for _, other := range part.Others() {
		if other.Publishing() {
			ss.consume(other)
		}
	}
}

// watch is told of the other participants' events (room.Manager.Enter):
// a participant's media exists (make its consumer), it sent a chat message
// or its features (deliver), or it left (tell the client). It does not
// block.
func (ss *session) watch(e room.Event) {
	switch e.Kind {
	case room.Published:
		ss.consume(e.Participant)
	case room.Message:
		ss.deliver(e.Data)
	case room.Left:
		ss.mu.Lock()
		delete(ss.consumers, e.Participant.ID) // its feed has ended
		ending := ss.ending
		ss.mu.Unlock()
		if !ending {
			ss.send(disconnectMessage{Type: typeClientDisconnect, ClientID: e.Participant.ID})
		}
	}
}

// consume makes, once, the consumer of participant pub for the client, on
// a goroutine of its own.
func (ss *session) consume(pub *room.Participant) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.ending || ss.part == nil || pub == ss.part {
		return
	}
	if _, ok := ss.consumers[pub.ID]; ok {
		return
	}
	c := &consumer{remote: pub.ID}
	ss.consumers[pub.ID] = c
	ss.wg.Add(1)
	go ss.runConsumer(c, pub)
}

// dropConsumer forgets c, if it is still pub's consumer.
func (ss *session) dropConsumer(c *consumer) {
	ss.mu.Lock()
	if ss.consumers[c.remote] == c {
		delete(ss.consumers, c.remote)
	}
	ss.mu.Unlock()
}

// runConsumer makes the feed of pub, offers it to the client (one offer,
// never renegotiated: the feed carries audio and video from the start),
// announces pub's features once it connects, and forgets it when it ends.
func (ss *session) runConsumer(c *consumer, pub *room.Participant) {
	defer ss.wg.Done()
	feed, err := ss.part.Subscribe(pub)
	if err != nil {
		ss.dropConsumer(c)
		if !errors.Is(err, room.ErrLeft) {
			ss.log.Warn("arbiter: cannot make a consumer", "remote", pub.ID, "err", err)
		}
		return
	}
	defer ss.dropConsumer(c)
	ss.mu.Lock()
	if ss.ending || ss.consumers[c.remote] != c {
		ss.mu.Unlock()
		feed.Close()
		return
	}
	c.feed = feed
	ss.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), ss.s.cfg.GatherTimeout)
	go func() { // the wait for candidates ends with the socket
		select {
		case <-ss.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	offer, err := feed.Peer().Offer(ctx)
	cancel()
	if err != nil {
		feed.Close()
		if !errors.Is(err, rtc.ErrClosed) {
			ss.log.Warn("arbiter: cannot offer a consumer", "remote", pub.ID, "err", err)
		}
		return
	}
	ss.mu.Lock()
	c.offered = true
	id, roomID := ss.id, ss.roomID
	ss.mu.Unlock()
	ss.send(consumerMessage{Type: typeConsumer, Sender: roomID, Receiver: id, RemotePeerID: pub.ID, Description: &description{Type: "offer", SDP: offer}})

	select {
	case <-feed.Peer().Connected():
		ss.mu.Lock()
		c.announce = true
		ss.mu.Unlock()
		ss.announce()
	case <-feed.Done():
		return
	case <-ss.closing:
		return
	}
	select {
	case <-feed.Done():
	case <-ss.closing:
	}
}

// announce sends, on the client's features channel once it is open, the
// features of each remote participant whose consumer connected and that
// was not announced yet: the stock client shows a remote video only after
// them.
func (ss *session) announce() {
	ss.mu.Lock()
	dc := ss.features
	if dc == nil || !ss.featOpen {
		ss.mu.Unlock()
		return
	}
	var due []string
	for id, c := range ss.consumers {
		if c.announce && !c.announced {
			c.announced = true
			due = append(due, id)
		}
	}
	ss.mu.Unlock()
	for _, id := range due {
		b, _ := json.Marshal(featuresMessage{ID: id, Features: features{Audio: true, Video: true}})
		if err := dc.SendText(string(b)); err != nil {
			ss.log.Debug("arbiter: features not sent", "remote", id, "err", err)
		}
	}
}

// handshake applies a producer or consumer message. It returns false when
// the socket must close.
func (ss *session) handshake(req request) bool {
	d := req.handshake
	ss.mu.Lock()
	id, roomID, part := ss.id, ss.roomID, ss.part
	ss.mu.Unlock()
	switch {
	case part == nil:
		ss.sendError("handshake before identify")
		return true
	case d.Sender != id:
		ss.sendError("handshake: sender is not the identified id")
		return true
	case req.roomID != roomID:
		ss.sendError("handshake: roomId is not the identified room")
		return true
	case d.Description == nil && d.Candidate == nil:
		ss.sendError("handshake: neither description nor candidate")
		return true
	}
	switch d.Type {
	case typeProducer:
		return ss.producer(d)
	case typeConsumer:
		ss.consumerMessage(d)
		return true
	default:
		ss.sendError("handshake: type must be producer or consumer")
		return true
	}
}

// producer applies a producer message: the client's offer (answered) or a
// candidate. The producer connection is made on the first one.
func (ss *session) producer(d handshakeData) bool {
	pub, err := ss.publisher()
	if err != nil {
		ss.log.Warn("arbiter: cannot make a producer", "err", err)
		ss.sendError("cannot make the producer connection")
		return false
	}
	if d.Candidate != nil {
		if err := pub.AddCandidate(*d.Candidate); err != nil {
			ss.sendError("producer candidate refused: " + err.Error())
		}
		return true
	}
	if d.Description.Type != "offer" {
		ss.sendError("producer: description must be an offer")
		return true
	}
	ss.mu.Lock()
	again := ss.answered
	ss.answered = true
	ss.mu.Unlock()
	if again {
		ss.sendError("producer: renegotiation is not supported")
		return true
	}
	ss.mu.Lock()
	ss.prodMid = firstMid(d.Description.SDP) // before Answer: its candidates name it
	ss.mu.Unlock()
	answer, err := pub.Answer(d.Description.SDP)
	if err != nil {
		ss.s.logThrottled(ss.log, &ss.s.clientLog, slog.LevelInfo, "arbiter: producer offer refused", "err", err)
		ss.sendError("producer offer refused: " + err.Error())
		pub.Close()
		return true // the producer closes: the socket follows (pubDone)
	}
	ss.mu.Lock()
	id, roomID := ss.id, ss.roomID
	ss.mu.Unlock()
	ss.send(producerMessage{Type: typeProducer, Sender: roomID, Receiver: id, Description: &description{Type: "answer", SDP: answer}})
	return true
}

// publisher returns the participant's producer connection, making it with
// its data channels and candidate trickle on the first call.
func (ss *session) publisher() (*rtc.Peer, error) {
	ss.mu.Lock()
	if ss.pub != nil {
		defer ss.mu.Unlock()
		return ss.pub, nil
	}
	part, id, roomID := ss.part, ss.id, ss.roomID
	ss.mu.Unlock()
	pub, err := part.Publisher()
	if err != nil {
		return nil, err
	}
	chat, err := pub.NegotiatedDataChannel(chatLabel, chatID)
	if err != nil {
		pub.Close()
		return nil, err
	}
	feat, err := pub.NegotiatedDataChannel(featuresLabel, featuresID)
	if err != nil {
		pub.Close()
		return nil, err
	}
	chat.OnMessage(func(m webrtc.DataChannelMessage) { ss.relay(m, false) })
	feat.OnMessage(func(m webrtc.DataChannelMessage) { ss.relay(m, true) })
	feat.OnOpen(func() {
		ss.mu.Lock()
		ss.featOpen = true
		ss.mu.Unlock()
		ss.announce()
	})
	pub.OnCandidate(func(ci webrtc.ICECandidateInit) {
		// pion names no m-line (sdpMid ""); a browser matches sdpMid
		// against its m-lines: name the first, which BUNDLE makes carry
		// every candidate.
		ss.mu.Lock()
		mid := ss.prodMid
		ss.mu.Unlock()
		var index uint16
		ci.SDPMid, ci.SDPMLineIndex = &mid, &index
		ss.send(producerMessage{Type: typeProducer, Sender: roomID, Receiver: id, Candidate: &ci})
	})
	ss.mu.Lock()
	ss.pub, ss.chat, ss.features = pub, chat, feat
	ss.mu.Unlock()
	ss.pubDone = pub.Done()
	return pub, nil
}

// consumerMessage applies the client's answer to a consumer offer, or a
// candidate of a consumer.
func (ss *session) consumerMessage(d handshakeData) {
	ss.mu.Lock()
	c := ss.consumers[d.RemotePeerID]
	var feed *room.Feed
	offered, answered := false, false
	if c != nil {
		feed, offered, answered = c.feed, c.offered, c.answered
		if d.Description != nil && offered {
			c.answered = true
		}
	}
	ss.mu.Unlock()
	if c == nil || !offered {
		ss.sendError("consumer: no consumer offered for this remotePeerId")
		return
	}
	if d.Candidate != nil {
		if err := feed.Peer().AddCandidate(*d.Candidate); err != nil {
			ss.sendError("consumer candidate refused: " + err.Error())
		}
		return
	}
	switch {
	case d.Description.Type != "answer":
		ss.sendError("consumer: description must be an answer")
	case answered:
		ss.sendError("consumer: already answered")
	default:
		if err := feed.Peer().SetAnswer(d.Description.SDP); err != nil {
			ss.sendError("consumer answer refused: " + err.Error())
			feed.Close()
		}
	}
}

// What a participant's data-channel message is, in the first byte of its
// room message (room.Participant.Broadcast).
const (
	msgChatText   = 'c'
	msgChatBinary = 'b'
	msgFeatures   = 'f'
)

// relay passes a chat message (verbatim) or the client's features (as its
// own: the id is the sender's, whatever it wrote) to the room's other
// participants, on this router and the others of its cluster (watch hands
// it to each receiver's channel, deliver). Messages too large or too many
// are dropped and counted.
func (ss *session) relay(m webrtc.DataChannelMessage, isFeatures bool) {
	s := ss.s
	if len(m.Data) > chatMax || !ss.chatLimit.Allow() {
		s.stats.chatDropped.Add(1)
		return
	}
	ss.mu.Lock()
	id, part := ss.id, ss.part
	ss.mu.Unlock()
	if part == nil {
		return
	}
	kind, data := byte(msgChatBinary), m.Data
	switch {
	case isFeatures:
		var f struct {
			Features *features `json:"features"`
		}
		if json.Unmarshal(m.Data, &f) != nil || f.Features == nil {
			s.stats.chatDropped.Add(1)
			return
		}
		kind = msgFeatures
		data, _ = json.Marshal(featuresMessage{ID: id, Features: *f.Features}) // cannot fail: plain fields
	case m.IsString:
		kind = msgChatText
	}
	msg := append([]byte{kind}, data...)
	if err := part.Broadcast(msg); err != nil {
		s.stats.chatDropped.Add(1)
	}
}

// deliver sends another participant's room message (relay) on the
// client's chat or features channel; it is dropped and counted when the
// channel is not open, or too far behind.
func (ss *session) deliver(msg []byte) {
	if len(msg) < 1 || msg[0] != msgChatText && msg[0] != msgChatBinary && msg[0] != msgFeatures {
		return // not one of relay's
	}
	ss.mu.Lock()
	dc, open := ss.chat, true
	if msg[0] == msgFeatures {
		dc, open = ss.features, ss.featOpen
	}
	ss.mu.Unlock()
	if dc == nil || !open || dc.ReadyState() != webrtc.DataChannelStateOpen || dc.BufferedAmount() > chatBuffered {
		ss.s.stats.chatDropped.Add(1)
		return
	}
	var err error
	if msg[0] == msgChatBinary {
		err = dc.Send(msg[1:])
	} else {
		err = dc.SendText(string(msg[1:]))
	}
	if err != nil {
		ss.s.stats.chatDropped.Add(1)
	}
}

// firstMid returns the mid of the first m-line of an SDP, or "0".
func firstMid(sdp string) string {
	for line := range strings.Lines(sdp) {
		if v, ok := strings.CutPrefix(line, "a=mid:"); ok {
			if v = strings.TrimSpace(v); v != "" {
				return v
			}
		}
	}
	return "0"
}
