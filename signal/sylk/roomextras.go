package sylk

import (
	"slices"
)

// The optional room requests of sylkrtc.js: configure (active
// participants), invite, raised hands and mute everyone. Participants are
// named by their publisher ids, the ids the clients know them by. The
// room state they change (vroom.active, vroom.hands) is guarded by
// Server.mu, and their events are queued under it so that every member
// sees the changes in the same order (conn.send never blocks).

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
		if vr.members[id] == nil {
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
}

// roomInvite invites accounts to the room: each socket where an invitee
// is registered gets account-event conference-invite {account, room,
// session_id, originator}. Invitees registered nowhere are skipped (there
// is no SIP gateway for others yet); the request is acked either way.
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
		for _, tc := range c.s.registered(aor) {
			tc.send(message{"sylkrtc": "account-event", "account": aor, "event": "conference-invite", "room": rs.uri,
				"session_id": rs.pubID, "originator": message{"uri": rs.account, "display_name": rs.display}})
			sent++
		}
	}
	c.log.Info("sylk room invite", "room", rs.uri, "account", rs.account, "invitees", len(seen), "sockets", sent)
}

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
	case vr.members[who] == nil:
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
