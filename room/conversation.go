package room

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Conversation groups users whose devices hear each other. Its assignment
// of speakers to slots is recomputed on a goroutine of its own, woken by
// Reassign: membership changes and the packet path only ask for it.
type Conversation struct {
	// ID is the conversation id (the bite key).
	ID string

	// members and participants are guarded by Manager.mu.
	members      map[*User]struct{}
	participants map[string]*Participant

	mu      sync.Mutex
	devices []*device // connected devices of members
	tracks  []*Track  // tracks published by members' devices and participants
	feeds   []*Feed   // feeds of participants
	// receivers are the participants whose publishing connection
	// receives another participant (Participant.Receive).
	receivers []*Participant

	// lastReassign (unix ns) rate-limits retries for waiting speakers.
	lastReassign atomic.Int64

	// mixing is the mixing stage, nil without one (mixing.go). mixes are
	// the mixes devices hear now, by key; session mixes them while any is
	// heard; expiry (unix ns) is when the next active speaker turns
	// inactive, for the policy to run again then. mixes and expiry are
	// guarded by mu.
	mixing  Mixing
	mixes   map[string]*Mix
	session atomic.Pointer[sessionBox]
	expiry  int64

	kick     chan struct{}      // capacity 1: a reassignment is due
	syncs    chan chan struct{} // a reassignment whose end is waited for
	quit     chan struct{}      // closed when the conversation ends
	stopOnce sync.Once
	done     chan struct{} // closed when its goroutine has returned
}

// newConversation returns a conversation whose goroutine runs until stop;
// mixing is the mixing stage, or nil.
func newConversation(id string, mixing Mixing) *Conversation {
	c := &Conversation{
		ID:           id,
		mixing:       mixing,
		members:      make(map[*User]struct{}),
		participants: make(map[string]*Participant),
		kick:         make(chan struct{}, 1),
		syncs:        make(chan chan struct{}),
		quit:         make(chan struct{}),
		done:         make(chan struct{}),
	}
	go c.run()
	return c
}

// run reassigns whenever asked, until the conversation ends. With a
// mixing stage it also reassigns when an active speaker turns inactive,
// so that a mix it made necessary ends.
func (c *Conversation) run() {
	defer close(c.done)
	defer c.stopMixing()
	expire := time.NewTimer(time.Hour)
	expire.Stop()
	defer expire.Stop()
	for {
		var next int64
		select {
		case <-c.quit:
			return
		case <-c.kick:
			next = c.reassign()
		case <-expire.C:
			next = c.reassign()
		case done := <-c.syncs:
			next = c.reassign()
			close(done)
		}
		expire.Stop()
		if next != 0 {
			// A millisecond late, so that the speaker is inactive then.
			expire.Reset(time.Duration(next-time.Now().UnixNano()) + time.Millisecond)
		}
	}
}

// reassign runs the policy now. It returns when the next active speaker
// turns inactive (unix ns) if that should run it again, else 0.
func (c *Conversation) reassign() (next int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reassignLocked(time.Now().UnixNano())
	return c.expiry
}

// stopMixing ends the conversation's mix session, if any.
func (c *Conversation) stopMixing() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopMixingLocked()
}

// sync reassigns now and waits until that is done (or the conversation has
// ended), so that a membership change has taken effect when the call that
// made it returns: a joined device hears its conversation, a new track is
// forwarded from its first packet. Callers hold no lock.
func (c *Conversation) sync() {
	done := make(chan struct{})
	select {
	case c.syncs <- done:
	case <-c.quit:
		return
	}
	select {
	case <-done:
	case <-c.quit:
	}
}

// stop ends the conversation's goroutine and waits for it. It may be
// called more than once (a leave after the Manager closed).
func (c *Conversation) stop() {
	c.stopOnce.Do(func() { close(c.quit) })
	<-c.done
}

// Reassign asks the conversation to recompute which speakers the members'
// slots receive. It never blocks: the forwarder calls it from the packet
// path when a track starts speaking.
func (c *Conversation) Reassign() {
	select {
	case c.kick <- struct{}{}:
	default: // one is due already
	}
}

// RetryDue reports whether a waiting speaker may ask for reassignment at now
// (unix ns): at most once per interval per conversation.
func (c *Conversation) RetryDue(now int64, interval time.Duration) bool {
	last := c.lastReassign.Load()
	return now-last >= int64(interval) && c.lastReassign.CompareAndSwap(last, now)
}

// add makes u a member and adds its devices and tracks. Callers hold
// Manager.mu.
func (c *Conversation) add(u *User, devices []*device, tracks []*Track) {
	c.members[u] = struct{}{}
	c.mu.Lock()
	for _, d := range devices {
		if !slices.Contains(c.devices, d) {
			c.devices = append(c.devices, d)
		}
	}
	for _, t := range tracks {
		if !slices.Contains(c.tracks, t) {
			c.tracks = append(c.tracks, t)
		}
	}
	c.mu.Unlock()
	c.Reassign()
}

// remove takes u, its devices and its tracks out: at once, so that from
// here on none of u's packets reach c and none of c's reach u. It reports
// whether the conversation is now empty. Callers hold Manager.mu.
func (c *Conversation) remove(u *User) (empty bool) {
	delete(c.members, u)
	c.mu.Lock()
	c.devices = slices.DeleteFunc(c.devices, func(d *device) bool {
		if d.user == u {
			unbind(d)
			return true
		}
		return false
	})
	c.tracks = slices.DeleteFunc(c.tracks, func(t *Track) bool {
		if t.User() == u {
			t.targets.Store(nil)
			t.waiting.Store(false)
			t.mixed.Store(false)
			return true
		}
		return false
	})
	c.mu.Unlock()
	c.Reassign()
	return len(c.members) == 0 && len(c.participants) == 0
}

// removeDevice takes a closed device out. Callers hold Manager.mu.
func (c *Conversation) removeDevice(d *device) {
	c.mu.Lock()
	c.devices = slices.DeleteFunc(c.devices, func(e *device) bool { return e == d })
	unbind(d)
	c.mu.Unlock()
	c.Reassign()
}

// removeTrack takes an ended track out.
func (c *Conversation) removeTrack(t *Track) {
	c.mu.Lock()
	c.tracks = slices.DeleteFunc(c.tracks, func(q *Track) bool { return q == t })
	t.targets.Store(nil)
	t.mixed.Store(false)
	c.mu.Unlock()
	c.Reassign()
}

// unbind clears every slot of d.
func unbind(d *device) {
	for _, s := range d.slots {
		s.SetSource(nil)
	}
}
