package sylk

import (
	"encoding/json"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/room"
)

// The optional room requests of sylkrtc.js: configure (active
// participants), invite, raised hands and mute everyone. Participants are
// named by their publisher ids, the ids the clients know them by. The
// room state they change (vroom.active, vroom.hands) is guarded by
// Server.mu, and their events are queued under it so that every member
// sees the changes in the same order (conn.send never blocks).
//
// With several routers, a room's members may be on any of them: the
// router a request reaches applies it to its members, and sends it to
// the others as a room message (room.Participant.Broadcast, an extra
// below), which each of their members' watches applies for its own client
// (applyExtra). The room state is each router's: it holds the changes
// made while it had members in the room.

// extra is a room request passed to the other routers of a cluster.
type extra struct {
	// Sylk names the request: "configure", "hand" or "mute".
	Sylk string `json:"sylk"`
	// Active is configure's active participants.
	Active []string `json:"active,omitempty"`
	// Who and Raised are hand's participant and whether its hand is up.
	Who    string `json:"who,omitempty"`
	Raised bool   `json:"raised,omitempty"`
}

// share sends e, a request of rs applied here, to the routers of the
// room's members elsewhere. Callers may hold Server.mu (Broadcast never
// blocks on the network; the watches it calls here ignore it).
func (rs *roomSession) share(e extra) {
	b, _ := json.Marshal(e) // cannot fail: plain fields
	if err := rs.part.Broadcast(b); err != nil {
		rs.c.log.Debug("sylk room request not shared with the other routers", "err", err)
	}
}

// applyExtra applies, for rs's client only, a request that a member of
// the room on another router made there (share): the room state here
// follows it (each member's watch applies it again: that changes nothing),
// and rs's client gets the event the request's members got.
func (rs *roomSession) applyExtra(from *room.Participant, data []byte) {
	var e extra
	if json.Unmarshal(data, &e) != nil {
		return // not a room request
	}
	s := rs.c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	vr := s.rooms[rs.uri]
	if vr == nil || vr.members[rs.pubID] != rs {
		return
	}
	switch e.Sylk {
	case "configure":
		if len(e.Active) > maxActive || slices.ContainsFunc(e.Active, func(id string) bool { return !validID(id, maxID) }) {
			return
		}
		vr.active = slices.Compact(slices.Clone(e.Active))
		m := roomEvent(rs.id, "configure")
		m["originator"], m["active_participants"] = from.ID, append([]string{}, vr.active...)
		rs.c.send(m)
	case "hand":
		if !validID(e.Who, maxID) {
			return
		}
		up := slices.Contains(vr.hands, e.Who)
		switch {
		case e.Raised && !up:
			vr.hands = append(vr.hands, e.Who)
		case !e.Raised && up:
			vr.hands = slices.DeleteFunc(vr.hands, func(id string) bool { return id == e.Who })
		}
		vr.tellHands(rs)
	case "mute":
		m := roomEvent(rs.id, "mute-audio")
		m["originator"] = from.ID
		rs.c.send(m)
	}
}

// inRoom reports whether publisher id is a member of rs's room, here or,
// in a cluster, on another router (known here once it publishes).
// Server.mu held.
func (vr *vroom) inRoom(rs *roomSession, id string) bool {
	return vr.members[id] != nil || rs.part.Other(id) != nil
}

// liveSession returns the room session r names, answering an error when
// there is none or it has ended.
func (c *conn) liveSession(r *Request) *roomSession {
	rs := c.roomSession(r)
	if rs == nil {
		return nil
	}
	rs.mu.Lock()
	ended := rs.ended
	rs.mu.Unlock()
	if ended {
		c.fail(r.Transaction, "no such conference session")
		return nil
	}
	return rs
}

// roomConfigure sets the room's active participants (at most two
// publisher ids of the room): every member gets configure {originator,
// active_participants}.
func (c *conn) roomConfigure(r *Request) {
	rs := c.liveSession(r)
	if rs == nil {
		return
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	vr := s.rooms[rs.uri]
	if vr == nil || vr.members[rs.pubID] != rs {
		c.fail(r.Transaction, "no such conference session")
		return
	}
	for _, id := range r.Active {
		if !vr.inRoom(rs, id) {
			c.fail(r.Transaction, "active_participants: no such participant in this room")
			return
		}
	}
	vr.active = slices.Compact(slices.Clone(r.Active))
	c.ack(r.Transaction)
	for _, q := range vr.sorted() {
		m := roomEvent(q.id, "configure")
		m["originator"], m["active_participants"] = rs.pubID, append([]string{}, vr.active...)
		q.c.send(m)
	}
	rs.share(extra{Sylk: "configure", Active: vr.active})
}

// roomInvite invites accounts to the room: each socket where an invitee
// is registered, on this router or (Config.NATS) another of its cluster,
// gets account-event conference-invite {account, room, session_id,
// originator}. Invitees registered nowhere are skipped (there is no SIP
// gateway for others yet); the request is acked either way.
func (c *conn) roomInvite(r *Request) {
	rs := c.liveSession(r)
	if rs == nil {
		return
	}
	c.ack(r.Transaction)
	seen := map[string]bool{}
	sent := 0
	for _, p := range r.Participants {
		aor := normalizeAOR(p)
		if seen[aor] || aor == rs.account {
			continue
		}
		seen[aor] = true
		inv := invitation{Account: aor, Room: rs.uri, SessionID: rs.pubID, From: rs.account, Display: rs.display}
		sent += c.s.invite(inv)
		c.s.shareInvite(inv)
	}
	c.log.Info("sylk room invite", "room", rs.uri, "account", rs.account, "invitees", len(seen), "sockets", sent)
}

// InviteSubject is the NATS subject on which the routers of a cluster pass
// each other invitations (Config.NATS).
const InviteSubject = "sylk.invite"

// invitation is one invitee's conference-invite, as routers pass it.
type invitation struct {
	Account   string `json:"account"`
	Room      string `json:"room"`
	SessionID string `json:"session_id"`
	From      string `json:"from"`
	Display   string `json:"display_name"`
	// Server is the sending router's Server, which skips its own.
	Server string `json:"server"`
}

// invite sends inv to the sockets of this router where its invitee is
// registered, and returns how many.
func (s *Server) invite(inv invitation) int {
	cs := s.registered(inv.Account)
	for _, tc := range cs {
		tc.send(message{"sylkrtc": "account-event", "account": inv.Account, "event": "conference-invite", "room": inv.Room,
			"session_id": inv.SessionID, "originator": message{"uri": inv.From, "display_name": inv.Display}})
	}
	return len(cs)
}

// shareInvite passes inv to the other routers of the cluster, if any.
func (s *Server) shareInvite(inv invitation) {
	if s.cfg.NATS == nil {
		return
	}
	inv.Server = s.id
	b, _ := json.Marshal(inv) // cannot fail: strings
	if err := s.cfg.NATS.Publish(InviteSubject, b); err != nil {
		s.log.Warn("sylk invitation not passed to the other routers", "room", inv.Room, "err", err)
	}
}

// onInvite delivers another router's invitation to the invitee's sockets
// here. What does not parse, or names ids no client could have sent, is
// dropped.
func (s *Server) onInvite(m *nats.Msg) {
	var inv invitation
	if len(m.Data) > maxInvitation || json.Unmarshal(m.Data, &inv) != nil || inv.Server == s.id ||
		inv.Account == "" || inv.Room == "" || !validID(inv.SessionID, maxID) {
		return
	}
	if n := s.invite(inv); n > 0 {
		s.log.Info("sylk room invite from another router", "room", inv.Room, "account", inv.Account, "sockets", n)
	}
}

// maxInvitation bounds an invitation passed between routers.
const maxInvitation = 8 << 10

// roomToggleHand raises or lowers the requester's hand, or lowers the
// hand of the participant session_id names (raising another's hand is
// refused); every member gets raised-hands {raised_hands}.
func (c *conn) roomToggleHand(r *Request) {
	rs := c.liveSession(r)
	if rs == nil {
		return
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	vr := s.rooms[rs.uri]
	if vr == nil || vr.members[rs.pubID] != rs {
		c.fail(r.Transaction, "no such conference session")
		return
	}
	who := rs.pubID
	if r.SessionID != "" {
		who = r.SessionID
	}
	raised := slices.Contains(vr.hands, who)
	switch {
	case !vr.inRoom(rs, who):
		c.fail(r.Transaction, "session_id: no such participant in this room")
		return
	case who != rs.pubID && !raised:
		c.fail(r.Transaction, "only the participant may raise its hand")
		return
	case raised:
		vr.hands = slices.DeleteFunc(vr.hands, func(id string) bool { return id == who })
	default:
		vr.hands = append(vr.hands, who)
	}
	c.ack(r.Transaction)
	vr.tellHands(nil)
	rs.share(extra{Sylk: "hand", Who: who, Raised: !raised})
}

// roomMuteAudio asks every other member to mute its microphone:
// mute-audio {originator}. The router does not mute anybody itself.
func (c *conn) roomMuteAudio(r *Request) {
	rs := c.liveSession(r)
	if rs == nil {
		return
	}
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	vr := s.rooms[rs.uri]
	if vr == nil || vr.members[rs.pubID] != rs {
		c.fail(r.Transaction, "no such conference session")
		return
	}
	c.ack(r.Transaction)
	for _, q := range vr.sorted() {
		if q != rs {
			m := roomEvent(q.id, "mute-audio")
			m["originator"] = rs.pubID
			q.c.send(m)
		}
	}
	rs.share(extra{Sylk: "mute"})
}

// sendHands tells a joiner the raised hands, if any.
func (s *Server) sendHands(rs *roomSession) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vr := s.rooms[rs.uri]; vr != nil && len(vr.hands) > 0 {
		vr.tellHands(rs)
	}
}

// sorted returns the room's sessions in publisher id order. Server.mu
// held.
func (vr *vroom) sorted() []*roomSession {
	out := make([]*roomSession, 0, len(vr.members))
	for _, q := range vr.members {
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b *roomSession) int { return cmpString(a.pubID, b.pubID) })
	return out
}

// tellHands sends raised-hands to only, or to every member when only is
// nil. Server.mu held.
func (vr *vroom) tellHands(only *roomSession) {
	for _, q := range vr.sorted() {
		if only == nil || q == only {
			m := roomEvent(q.id, "raised-hands")
			m["raised_hands"] = append([]string{}, vr.hands...)
			q.c.send(m)
		}
	}
}

// forgetRemote is forget for participant id of room uri that left on
// another router (each member's watch calls it: only the first changes
// anything).
func (s *Server) forgetRemote(uri, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if vr := s.rooms[uri]; vr != nil {
		vr.forget(id)
	}
}

// forget drops a participant that left from the active participants and
// the raised hands; the others are told when its hand was up. Server.mu
// held.
func (vr *vroom) forget(id string) {
	vr.active = slices.DeleteFunc(vr.active, func(a string) bool { return a == id })
	if slices.Contains(vr.hands, id) {
		vr.hands = slices.DeleteFunc(vr.hands, func(h string) bool { return h == id })
		vr.tellHands(nil)
	}
}
