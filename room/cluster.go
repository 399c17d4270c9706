package room

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/beepvoice/router/rtc"
)

// What the room layer offers a cluster of routers on one NATS (package
// cluster): memberships shared through a store every router watches, the
// conversations this router listens in, and remote tracks, the up-tracks of
// publishers connected to another router, which the speaker policy treats
// like local ones.

// Membership shares memberships with the other routers of a cluster.
type Membership interface {
	// Joined is told of a join made on this router (Join), after it took
	// effect here. It may block for a store's round trip; it is called
	// without locks held.
	Joined(userID, convID string)
	// Lookup returns the conversation the cluster knows userID to be a
	// member of, or "". It is called without locks held and reads a local
	// cache: it must not block on the network.
	Lookup(userID string) string
}

// MessageRelay carries the participants' messages (Participant.Broadcast)
// to the other routers of a cluster, which hand them to their own
// participants (Manager.Deliver).
type MessageRelay interface {
	// Broadcast sends data, a message of participant who in conversation
	// convID, to the other routers with participants in it. It is called
	// without locks held and must not block on the network.
	Broadcast(convID string, who Identity, data []byte)
}

// ErrNoConversation is returned by AddRemoteTrack for a conversation this
// router does not have.
var ErrNoConversation = errors.New("no such conversation on this router")

// changed tells Config.Changed. Callers hold m.mu.
func (m *Manager) changed() {
	if m.cfg.Changed != nil {
		m.cfg.Changed()
	}
}

// adoptMembership makes u, whose device was just admitted, a member of the
// conversation the cluster knows it in, if it is a member of none here.
func (m *Manager) adoptMembership(u *User) {
	if m.cfg.Membership == nil || u.conv.Load() != nil {
		return
	}
	if conv := m.cfg.Membership.Lookup(u.ID); conv != "" {
		if err := m.Apply(u.ID, conv); err != nil {
			m.log.Warn("cluster membership not applied", "user", u.ID, "conversation", conv, "err", err)
		}
	}
}

// Apply applies a membership change made on another router: userID joins
// convID (or, with convID "", leaves its conversation) as with Join or
// Leave, without telling Config.Membership. A user this router does not
// know is left alone: its first device takes the membership then
// (Membership.Lookup), so that routers do not hold every user of the
// cluster.
func (m *Manager) Apply(userID, convID string) error {
	m.mu.Lock()
	known := m.users[userID] != nil
	m.mu.Unlock()
	if !known {
		return nil
	}
	if convID == "" {
		m.Leave(userID)
		return nil
	}
	c, evicted, err := m.join(userID, convID)
	closePeers(evicted)
	if c != nil {
		c.sync()
	}
	return err
}

// Listening returns the ids of the conversations in which a connected
// device of this router receives (has slots): those whose media other
// routers must relay here.
func (m *Manager) Listening() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id, c := range m.convs {
		if listens(c) {
			ids = append(ids, id)
		}
	}
	return ids
}

// ConnectedMembers returns the conversation of each user that has a
// connected device here and is a member of one: the memberships this
// router keeps alive in a cluster's shared store.
func (m *Manager) ConnectedMembers() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string)
	for id, u := range m.users {
		c := u.conv.Load()
		if c == nil {
			continue
		}
		for _, d := range u.devices {
			if d.connected {
				out[id] = c.ID
				break
			}
		}
	}
	return out
}

// listens reports whether c has a participant connected here (it may
// attach a feed of any publisher at any time: a video room's participants
// receive its publishers), or a connected device of c's members has
// slots. Callers hold m.mu.
func listens(c *Conversation) bool {
	for _, p := range c.participants {
		if !p.remote {
			return true
		}
	}
	for u := range c.members {
		for _, d := range u.devices {
			if d.connected && len(d.slots) > 0 {
				return true
			}
		}
	}
	return false
}

// AddRemoteTrack adds up, a track of user userID relayed from another
// router, to conversation convID, and returns once the speaker policy
// takes it into account: it is heard on the slots of the conversation's
// devices like a local track, never on userID's own devices. The track
// stays in convID until RemoveRemoteTrack. Its packets go through a
// pipeline chain like a local track's (pipeline.Pipeline.OpenRelayed).
func (m *Manager) AddRemoteTrack(convID, userID string, up *rtc.UpTrack) (*Track, error) {
	if userID == "" {
		return nil, errors.New("room: a remote track needs its user")
	}
	m.mu.Lock()
	c := m.convs[convID]
	if c == nil || m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNoConversation, convID)
	}
	t := &Track{UpTrack: up, member: new(atomic.Pointer[Conversation]), remoteUser: userID}
	t.member.Store(c)
	c.mu.Lock()
	c.tracks = append(c.tracks, t)
	c.mu.Unlock()
	m.mu.Unlock()
	c.sync()
	return t, nil
}

// AddRemoteParticipantTrack adds up, a track of participant who relayed
// from another router, to conversation convID, and returns once the
// policies take it into account. The participant is made remote in convID
// with its first track (the other participants' watches are told it
// Published), and leaves with its last (RemoveRemoteTrack): the feeds of
// it then end and the watches are told it Left. Local participants
// subscribe to it like to a local one. Its packets go through a pipeline
// chain like a local track's (pipeline.Pipeline.OpenRelayed).
func (m *Manager) AddRemoteParticipantTrack(convID string, who Identity, up *rtc.UpTrack) (*Track, error) {
	if who.ID == "" || who.Claim.UserID == "" {
		return nil, errors.New("room: a remote participant's track needs its participant and user ids")
	}
	m.mu.Lock()
	c := m.convs[convID]
	if c == nil || m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNoConversation, convID)
	}
	p := c.participants[who.ID]
	switch {
	case p == nil:
		p = &Participant{Identity: who, m: m, c: c, remote: true}
		p.conv.Store(c)
		c.participants[who.ID] = p
		m.log.Info("remote participant entered", "conversation", convID, "participant", who.ID, "user", who.Claim.UserID)
	case !p.remote || p.Claim.UserID != who.Claim.UserID:
		// Two routers admitted the same id (each checks only its own):
		// the one here keeps it.
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrParticipantExists, who.ID)
	}
	t := &Track{UpTrack: up, member: &p.conv, part: p, remoteUser: who.Claim.UserID}
	p.addTrack(t) // releases m.mu
	return t, nil
}

// RemoveRemoteTrack takes a track of AddRemoteTrack or
// AddRemoteParticipantTrack out of its conversation: from here on its
// packets reach nobody. A remote participant leaves with its last track.
// The calls of AddRemoteParticipantTrack and RemoveRemoteTrack for one
// conversation must not run concurrently (the cluster makes them from the
// conversation's relay subscription, one frame at a time): a track added
// while its participant leaves would leave with it.
func (m *Manager) RemoveRemoteTrack(t *Track) {
	if t == nil || t.remoteUser == "" {
		return
	}
	if p := t.part; p != nil {
		m.mu.Lock()
		i := slices.Index(p.tracks, t)
		if i >= 0 {
			p.tracks = slices.Delete(p.tracks, i, i+1)
		}
		last := i >= 0 && len(p.tracks) == 0
		m.mu.Unlock()
		switch {
		case last:
			p.leave(false) // takes its tracks out of the conversation
		case i >= 0:
			p.c.removeTrack(t)
		}
		return
	}
	if c := t.member.Swap(nil); c != nil {
		c.removeTrack(t)
	}
}

// Participant returns the participant who published the track, or nil
// for a Beep device's track.
func (t *Track) Participant() *Participant { return t.part }

// Remote reports whether the track is relayed from another router.
func (t *Track) Remote() bool { return t.remoteUser != "" }

// UserID returns the publishing Beep user's id, or "" for a participant's
// track.
func (t *Track) UserID() string {
	if t.remoteUser != "" {
		return t.remoteUser
	}
	if t.user != nil {
		return t.user.ID
	}
	return ""
}

// ownedBy reports whether the track is published by u (a device never
// receives its own user's tracks, relayed ones included).
func (t *Track) ownedBy(u *User) bool {
	if t.remoteUser != "" {
		return u != nil && u.ID == t.remoteUser
	}
	return t.user == u
}
