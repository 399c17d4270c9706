package sylk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/pion/sdp/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// A video room is the conversation named by its URI (the key of its
// bites). Each room session is a participant whose publisher id, chosen
// by the router, is its participant id; the client publishes on the
// connection it offers (videoroom-join) and receives each other publisher
// on a feed the router offers (videoroom-feed-attach).

// vroom is the Server's view of one video room: its sylk sessions by
// publisher id. Guarded by Server.mu.
type vroom struct {
	uri     string
	members map[string]*roomSession
	active  []string // active participants (videoroom-configure)
	hands   []string // raised hands, in the order raised
}

// roomSession is one socket's session in a video room.
type roomSession struct {
	c       *conn
	id      string // the client's conference session id
	uri     string
	pubID   string
	account string
	display string
	part    *room.Participant
	peer    *rtc.Peer

	mu          sync.Mutex
	initialSent bool            // initial-publishers went out
	known       map[string]bool // publisher ids the client was told of
	feeds       map[string]*feed
	ended       bool
}

// feed is one feed a room session attached.
type feed struct {
	rs    *roomSession
	id    string
	pubID string
	f     *room.Feed
}

// roomEvent is a videoroom-event message of session.
func roomEvent(session, event string) message {
	return message{"sylkrtc": "videoroom-event", "session": session, "event": event}
}

// sessionState is a videoroom-event session-state message.
func sessionState(session, state string) message {
	m := roomEvent(session, "session-state")
	m["state"] = state
	return m
}

func (c *conn) roomJoin(r *Request) {
	s := c.s
	acc, err := c.authenticated(normalizeAOR(r.Account))
	if err != nil {
		c.fail(r.Transaction, err.Error())
		return
	}
	if c.hasSession(r.Session) {
		c.fail(r.Transaction, "session id in use")
		return
	}
	if max := s.cfg.MaxRoomsPerConnection; max > 0 && c.countSessions(func(v any) bool { _, ok := v.(*roomSession); return ok }) >= max {
		c.fail(r.Transaction, fmt.Sprintf("too many rooms on this connection (%d)", max))
		return
	}
	uri := normalizeAOR(r.URI)
	log := c.log.With("room", uri, "account", acc.aor)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.PermissionTimeout)
	err = s.cfg.Permissions.Check(ctx, acc.aor, uri)
	cancel()
	if err != nil {
		if errors.Is(err, permissions.ErrDenied) {
			log.Info("sylk room join denied")
			c.fail(r.Transaction, "403 Forbidden: not allowed in this room")
		} else {
			log.Warn("sylk room join refused: permission check failed", "err", err)
			c.fail(r.Transaction, "503 Service Unavailable: permission service unavailable")
		}
		return
	}
	rs := &roomSession{c: c, id: r.Session, uri: uri, pubID: newID(), account: acc.aor, display: acc.displayName,
		known: make(map[string]bool), feeds: make(map[string]*feed)}
	// The participant enters before the room lists it: others read
	// rs.part once they find rs there. Its first Published event comes
	// after its offer is answered, below, so it is listed by then.
	part, err := s.cfg.Rooms.Enter(uri, room.Identity{ID: rs.pubID, Claim: claim.Claim{UserID: acc.aor, ClientID: c.id}, Display: acc.displayName}, rs.watch)
	if err != nil {
		log.Warn("sylk room join refused", "err", err)
		c.fail(r.Transaction, "cannot join the room: "+err.Error())
		return
	}
	rs.part = part
	if err := s.addMember(rs); err != nil {
		part.Leave()
		c.fail(r.Transaction, err.Error())
		return
	}
	if !c.addSession(r.Session, rs) {
		part.Leave()
		s.dropMember(rs)
		c.fail(r.Transaction, "session id in use")
		return
	}
	c.send(sessionState(rs.id, "progress"))
	peer, err := part.Publisher()
	var answer string
	if err == nil {
		rs.peer = peer
		_, err = peer.Answer(r.SDP)
	}
	if err != nil {
		log.Info("sylk room offer refused", "err", err)
		rs.end(false)
		if errors.Is(err, rtc.ErrBadOffer) {
			c.fail(r.Transaction, "invalid videoroom-join: "+err.Error())
		} else {
			c.fail(r.Transaction, "cannot join the room")
		}
		return
	}
	ctx, cancel = context.WithTimeout(context.Background(), s.cfg.GatherTimeout)
	answer = peer.WaitGathered(ctx)
	cancel()
	m := sessionState(rs.id, "accepted")
	m["sdp"], m["audio"], m["video"] = answer, true, true
	c.send(m)
	rs.sendInitial()
	s.sendHands(rs)
	c.ack(r.Transaction)
	s.count.joins.Add(1)
	log.Info("sylk room joined", "publisher", rs.pubID)
	c.goroutine(rs.watchPeer)
}

// addMember adds rs to its room, within the bounds.
func (s *Server) addMember(rs *roomSession) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vr, ok := s.rooms[rs.uri]
	if !ok {
		if max := s.cfg.MaxRooms; max > 0 && len(s.rooms) >= max {
			return fmt.Errorf("too many rooms (%d)", max)
		}
		vr = &vroom{uri: rs.uri, members: make(map[string]*roomSession)}
		s.rooms[rs.uri] = vr
	}
	if max := s.cfg.MaxRoomParticipants; max > 0 && len(vr.members) >= max {
		return fmt.Errorf("the room is full (%d participants)", max)
	}
	vr.members[rs.pubID] = rs
	return nil
}

// dropMember takes rs out of its room.
func (s *Server) dropMember(rs *roomSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vr, ok := s.rooms[rs.uri]
	if !ok || vr.members[rs.pubID] != rs {
		return
	}
	delete(vr.members, rs.pubID)
	if len(vr.members) == 0 {
		delete(s.rooms, rs.uri)
		return
	}
	vr.forget(rs.pubID)
}

// publisherInfo describes publisher p in initial-publishers and
// publishers-joined: p may be a session of this router or, in a cluster,
// a participant connected to another router.
func publisherInfo(p *room.Participant) message {
	return message{"id": p.ID, "uri": p.Claim.UserID, "display_name": p.Display}
}

// sendInitial sends initial-publishers: the room's other participants that
// publish now, on this router or another of its cluster. From here on,
// watch tells of publishers joining and leaving. Taking rs.mu first orders
// this against watch: a publisher is either in this list or announced
// after it, never neither.
func (rs *roomSession) sendInitial() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	others := rs.part.Others()
	slices.SortFunc(others, func(a, b *room.Participant) int { return cmpString(a.ID, b.ID) })
	pubs := []message{}
	for _, q := range others {
		if q.Publishing() {
			pubs = append(pubs, publisherInfo(q))
			rs.known[q.ID] = true
		}
	}
	rs.initialSent = true
	m := roomEvent(rs.id, "initial-publishers")
	m["publishers"] = pubs
	rs.c.send(m)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// watch is the participant's room watch: publishers-joined when another
// participant publishes, publishers-left when one the client knows leaves,
// and the room requests of members on other routers. It never blocks
// (sends are queued).
func (rs *roomSession) watch(e room.Event) {
	id := e.Participant.ID
	// What members of the room on other routers did (the router's own
	// members' requests are applied where they are made). Server.mu is
	// taken without rs.mu: the requests' handlers hold it while they
	// share.
	switch {
	case e.Kind == room.Message:
		if e.Participant.Remote() {
			rs.applyExtra(e.Participant, e.Data)
		}
		return
	case e.Kind == room.Left && e.Participant.Remote():
		rs.c.s.forgetRemote(rs.uri, id)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !rs.initialSent || rs.ended {
		return // initial-publishers will tell, or nobody listens
	}
	switch e.Kind {
	case room.Published:
		if rs.known[id] {
			return
		}
		rs.known[id] = true
		m := roomEvent(rs.id, "publishers-joined")
		m["publishers"] = []message{publisherInfo(e.Participant)}
		rs.c.send(m)
	case room.Left:
		if !rs.known[id] {
			return
		}
		delete(rs.known, id)
		m := roomEvent(rs.id, "publishers-left")
		m["publishers"] = []string{id}
		rs.c.send(m)
	}
}

// watchPeer tells the client established once its publishing connection
// is up, and ends the session if the connection closes.
func (rs *roomSession) watchPeer() {
	select {
	case <-rs.peer.Connected():
		rs.mu.Lock()
		if !rs.ended {
			rs.c.send(sessionState(rs.id, "established"))
		}
		rs.mu.Unlock()
	case <-rs.peer.Done():
	case <-rs.c.quit:
		return
	}
	select {
	case <-rs.peer.Done():
		rs.end(true)
	case <-rs.c.quit:
	}
}

// end ends the session once: its feeds and connection close, it leaves
// the room, and, if tell, the client gets session-state terminated.
func (rs *roomSession) end(tell bool) {
	rs.mu.Lock()
	if rs.ended {
		rs.mu.Unlock()
		return
	}
	rs.ended = true
	feeds := make([]*feed, 0, len(rs.feeds))
	for _, f := range rs.feeds {
		feeds = append(feeds, f)
	}
	rs.feeds = nil
	if tell {
		rs.c.send(sessionState(rs.id, "terminated"))
	}
	rs.mu.Unlock()
	for _, f := range feeds {
		rs.c.dropSession(f.id, f)
		f.f.Close()
	}
	rs.c.dropSession(rs.id, rs)
	if rs.part != nil {
		rs.part.Leave()
	}
	rs.c.s.dropMember(rs)
	rs.c.log.Info("sylk room left", "room", rs.uri, "publisher", rs.pubID)
}

func (c *conn) roomSession(r *Request) *roomSession {
	rs, _ := c.session(r.Session).(*roomSession)
	if rs == nil {
		c.fail(r.Transaction, "no such conference session")
	}
	return rs
}

func (c *conn) roomLeave(r *Request) {
	rs := c.roomSession(r)
	if rs == nil {
		return
	}
	rs.end(true) // session-state terminated, then the ack, as SylkServer
	c.ack(r.Transaction)
}

// roomTrickle adds candidates to a conference's publishing connection or,
// when the session is a feed id, to that feed's connection.
func (c *conn) roomTrickle(r *Request) {
	var peer *rtc.Peer
	switch v := c.session(r.Session).(type) {
	case *roomSession:
		peer = v.peer
	case *feed:
		peer = v.f.Peer()
	}
	if peer == nil {
		c.fail(r.Transaction, "no such conference session or feed")
		return
	}
	c.addCandidates(peer, r.Cands)
	c.ack(r.Transaction)
}

func (c *conn) feedAttach(r *Request) {
	rs := c.roomSession(r)
	if rs == nil {
		return
	}
	if c.hasSession(r.Feed) {
		c.fail(r.Transaction, "feed id in use")
		return
	}
	// The publisher may be connected to another router of a cluster: the
	// room layer knows it from its relayed media.
	pub := rs.part.Other(r.Publisher)
	if pub == nil {
		c.fail(r.Transaction, "no such publisher in this room")
		return
	}
	rs.mu.Lock()
	n, ended := len(rs.feeds), rs.ended
	rs.mu.Unlock()
	if ended {
		c.fail(r.Transaction, "no such conference session")
		return
	}
	if max := c.s.cfg.MaxFeedsPerRoom; max > 0 && n >= max {
		c.fail(r.Transaction, fmt.Sprintf("too many feeds (%d)", max))
		return
	}
	f, err := rs.part.Subscribe(pub)
	if err != nil {
		c.fail(r.Transaction, "cannot attach the feed: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.GatherTimeout)
	offer, err := f.Peer().Offer(ctx)
	cancel()
	if err == nil {
		err = ssrcEverywhere(offer)
	}
	if err != nil {
		f.Close()
		c.log.Error("sylk feed offer failed", "err", err)
		c.fail(r.Transaction, "cannot attach the feed")
		return
	}
	fd := &feed{rs: rs, id: r.Feed, pubID: pub.ID, f: f}
	rs.mu.Lock()
	ok := !rs.ended && c.addSession(fd.id, fd)
	if ok {
		rs.feeds[fd.id] = fd
		m := roomEvent(rs.id, "feed-attached")
		m["feed"], m["sdp"] = fd.id, offer
		c.send(m)
	}
	rs.mu.Unlock()
	if !ok {
		f.Close()
		c.fail(r.Transaction, "feed id in use")
		return
	}
	c.ack(r.Transaction)
	c.s.count.feeds.Add(1)
	c.goroutine(fd.watch)
}

// ssrcEverywhere checks that every m-section of a feed offer has a=ssrc
// lines: sylkrtc.js throws on one without (its fixmsid iterates them).
func ssrcEverywhere(offer string) error {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(offer); err != nil {
		return fmt.Errorf("feed offer: %w", err)
	}
	for i, m := range d.MediaDescriptions {
		if !slices.ContainsFunc(m.Attributes, func(a sdp.Attribute) bool { return a.Key == "ssrc" }) {
			return fmt.Errorf("feed offer: m-section %d (%s) has no a=ssrc", i, m.MediaName.Media)
		}
	}
	return nil
}

// watch tells the client feed-established once the feed is up, and
// forgets the feed when it ends (its publisher left, it failed).
func (fd *feed) watch() {
	c := fd.rs.c
	select {
	case <-fd.f.Peer().Connected():
		fd.rs.mu.Lock()
		if fd.rs.feeds[fd.id] == fd {
			m := roomEvent(fd.rs.id, "feed-established")
			m["feed"] = fd.id
			c.send(m)
		}
		fd.rs.mu.Unlock()
	case <-fd.f.Done():
	case <-c.quit:
		return
	}
	select {
	case <-fd.f.Done():
		fd.forget()
	case <-c.quit:
	}
}

// forget drops the feed from its session.
func (fd *feed) forget() {
	fd.rs.mu.Lock()
	if fd.rs.feeds[fd.id] == fd {
		delete(fd.rs.feeds, fd.id)
	}
	fd.rs.mu.Unlock()
	fd.rs.c.dropSession(fd.id, fd)
}

// feedOf returns the feed r names in its session, answering an error if
// there is none.
func (c *conn) feedOf(r *Request) *feed {
	fd, _ := c.session(r.Feed).(*feed)
	if fd == nil || fd.rs.id != r.Session {
		c.fail(r.Transaction, "no such feed")
		return nil
	}
	return fd
}

func (c *conn) feedAnswer(r *Request) {
	fd := c.feedOf(r)
	if fd == nil {
		return
	}
	if err := fd.f.Peer().SetAnswer(r.SDP); err != nil {
		fd.forget()
		fd.f.Close()
		c.fail(r.Transaction, "invalid videoroom-feed-answer: "+err.Error())
		return
	}
	c.ack(r.Transaction)
}

func (c *conn) feedDetach(r *Request) {
	fd := c.feedOf(r)
	if fd == nil {
		return
	}
	fd.forget()
	fd.f.Close()
	c.ack(r.Transaction)
}
