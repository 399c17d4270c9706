package session

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Conversation groups users whose devices hear each other.
type Conversation struct {
	// ID is the conversation id (the bite key).
	ID string

	// members is guarded by Manager.mu.
	members map[*User]struct{}

	mu     sync.Mutex
	peers  []*Peer  // connected devices of members
	tracks []*Track // tracks published by members' devices

	// lastReassign (unix ns) rate-limits retries for waiting speakers.
	lastReassign atomic.Int64
}

func newConversation(id string) *Conversation {
	return &Conversation{ID: id, members: make(map[*User]struct{})}
}

// add makes u a member and adds its peers and tracks. Callers hold Manager.mu.
func (c *Conversation) add(u *User, peers []*Peer, tracks []*Track) {
	c.members[u] = struct{}{}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range peers {
		if !slices.Contains(c.peers, p) {
			c.peers = append(c.peers, p)
		}
	}
	for _, t := range tracks {
		if !slices.Contains(c.tracks, t) {
			c.tracks = append(c.tracks, t)
		}
	}
	c.reassignLocked(time.Now().UnixNano())
}

// remove takes u, its peers and its tracks out. It reports whether the
// conversation is now empty. Callers hold Manager.mu.
func (c *Conversation) remove(u *User) (empty bool) {
	delete(c.members, u)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers = slices.DeleteFunc(c.peers, func(p *Peer) bool {
		if p.user == u {
			p.clearSlots()
			return true
		}
		return false
	})
	c.tracks = slices.DeleteFunc(c.tracks, func(t *Track) bool {
		if t.User() == u {
			t.targets.Store(nil)
			t.waiting.Store(false)
			return true
		}
		return false
	})
	c.reassignLocked(time.Now().UnixNano())
	return len(c.members) == 0
}

// removePeer takes a closed device out. Callers hold Manager.mu.
func (c *Conversation) removePeer(p *Peer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.peers = slices.DeleteFunc(c.peers, func(q *Peer) bool { return q == p })
	p.clearSlots()
	c.reassignLocked(time.Now().UnixNano())
}

// removeTrack takes an ended track out. Callers hold Manager.mu.
func (c *Conversation) removeTrack(t *Track) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tracks = slices.DeleteFunc(c.tracks, func(q *Track) bool { return q == t })
	t.targets.Store(nil)
	c.reassignLocked(time.Now().UnixNano())
}

// Reassign recomputes which speakers the members' slots receive. The
// forwarder calls it when a track starts speaking; it takes only this
// conversation's lock.
func (c *Conversation) Reassign() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reassignLocked(time.Now().UnixNano())
}

// RetryDue reports whether a waiting speaker may ask for reassignment at now
// (unix ns): at most once per interval per conversation.
func (c *Conversation) RetryDue(now int64, interval time.Duration) bool {
	last := c.lastReassign.Load()
	return now-last >= int64(interval) && c.lastReassign.CompareAndSwap(last, now)
}

// reassignLocked assigns speakers to slots. Rules, per receiving device:
//   - a device never receives its own user's tracks;
//   - an assigned speaker keeps its slot while it is active, or while no
//     active speaker lacks a slot (no flapping between speakers);
//   - an active speaker without a slot takes a free slot, else the slot of
//     the assigned speaker that has been inactive longest;
//   - free slots left over take inactive speakers, most recent first, so
//     that a quiet conversation still flows.
//
// Speakers are ranked by how recently they spoke, then by age.
func (c *Conversation) reassignLocked(now int64) {
	c.lastReassign.Store(now)
	ranked := slices.Clone(c.tracks)
	slices.SortStableFunc(ranked, func(a, b *Track) int {
		if d := b.activeUntil.Load() - a.activeUntil.Load(); d != 0 {
			if d > 0 {
				return 1
			}
			return -1
		}
		return a.Started.Compare(b.Started)
	})
	inConv := make(map[*Track]bool, len(ranked))
	for _, t := range ranked {
		inConv[t] = true
		t.waiting.Store(false)
	}
	assigned := make(map[*Track][]*Slot, len(ranked))
	for _, p := range c.peers {
		p.assign(ranked, inConv, now)
		for _, s := range p.slots {
			if t := s.source.Load(); t != nil {
				assigned[t] = append(assigned[t], s)
			}
		}
	}
	for _, t := range ranked {
		if slots := assigned[t]; len(slots) > 0 {
			t.targets.Store(&targets{conv: c, slots: slots})
		} else {
			t.targets.Store(nil)
		}
	}
}

// assign fills p's slots from ranked, following the rules of reassignLocked.
func (p *Peer) assign(ranked []*Track, inConv map[*Track]bool, now int64) {
	owns := func(t *Track) bool {
		for _, s := range p.slots {
			if s.source.Load() == t {
				return true
			}
		}
		return false
	}
	for _, s := range p.slots {
		if t := s.source.Load(); t != nil && (!inConv[t] || t.User() == p.user) {
			s.setSource(nil)
		}
	}
	for _, t := range ranked {
		if t.User() == p.user || owns(t) {
			continue
		}
		active := t.Active(now)
		var slot *Slot
		for _, s := range p.slots {
			if s.source.Load() == nil {
				slot = s
				break
			}
		}
		if slot == nil && active {
			// Take the slot of the speaker that has been quiet longest.
			var quietest int64
			for _, s := range p.slots {
				o := s.source.Load()
				if until := o.activeUntil.Load(); until <= now && (slot == nil || until < quietest) {
					slot, quietest = s, until
				}
			}
		}
		if slot == nil {
			if active {
				t.waiting.Store(true)
				continue
			}
			return // the rest are inactive too: nothing more to place
		}
		slot.setSource(t)
	}
}
