package session

import (
	"sync/atomic"
	"time"
)

// User is one Beep user: the unit of membership. Its devices' peers follow
// its conversation.
type User struct {
	// ID is the user's id from the claim.
	ID string

	// conv is the user's conversation; read on every packet, without lock.
	conv atomic.Pointer[Conversation]
	// peers holds the user's devices by client id (Manager.mu).
	peers map[string]*Peer
	// idleSince is when the user last had no device (Manager.mu); zero
	// while it has one.
	idleSince time.Time
}

// Conversation returns the user's conversation, or nil. It is safe to call
// from the packet path.
func (u *User) Conversation() *Conversation { return u.conv.Load() }

// connectedPeers returns the user's connected devices. Callers hold Manager.mu.
func (u *User) connectedPeers() []*Peer {
	var ps []*Peer
	for _, p := range u.peers {
		if p.connectedFlag {
			ps = append(ps, p)
		}
	}
	return ps
}

// tracks returns the tracks the user's devices publish. Callers hold Manager.mu.
func (u *User) tracks() []*Track {
	var ts []*Track
	for _, p := range u.peers {
		p.tracksMu.Lock()
		ts = append(ts, p.published...)
		p.tracksMu.Unlock()
	}
	return ts
}
