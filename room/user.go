package room

import (
	"sync/atomic"
	"time"
)

// User is one user: the unit of membership. Its devices follow its
// conversation.
type User struct {
	// ID is the user's id from the claim.
	ID string

	// conv is the user's conversation; read on every packet, without lock.
	conv atomic.Pointer[Conversation]
	// devices holds the user's devices by client id (Manager.mu).
	devices map[string]*device
	// since holds when each device was admitted, by client id
	// (Manager.mu): the oldest gone device is evicted first.
	since map[string]time.Time
	// hadDevice is set once the user has had a device (Manager.mu): until
	// then its membership expires after IdleMembershipTTL, not
	// MembershipTTL.
	hadDevice bool
	// idleSince is when the user last had no device (Manager.mu); zero
	// while it has one.
	idleSince time.Time
}

// Conversation returns the user's conversation, or nil. It is safe to call
// from the packet path.
func (u *User) Conversation() *Conversation { return u.conv.Load() }

// connectedDevices returns the user's connected devices. Callers hold
// Manager.mu.
func (u *User) connectedDevices() []*device {
	var ds []*device
	for _, d := range u.devices {
		if d.connected {
			ds = append(ds, d)
		}
	}
	return ds
}

// tracks returns the tracks the user's devices publish. Callers hold
// Manager.mu.
func (u *User) tracks() []*Track {
	var ts []*Track
	for _, d := range u.devices {
		ts = append(ts, d.published...)
	}
	return ts
}
