package cluster

import (
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Interest: which other routers listen in which conversation. Every router
// publishes on <prefix>interest the whole list of conversations it has
// listening devices in, every heartbeat and at once when it changes; a
// router not heard from for three of its heartbeats, or that said goodbye,
// listens nowhere. A publisher's track reads the number of routers
// interested in its conversation from an entry it holds, with one atomic
// load per packet.

// Interest operations.
const (
	opHeartbeat = "hb"   // the sender listens in Convs (a full list)
	opBye       = "bye"  // the sender is closing
	opSync      = "sync" // the sender started: please announce now
)

// interestMsg is published on <prefix>interest.
type interestMsg struct {
	Op     string   `json:"op"`
	Router string   `json:"r"`
	Convs  []string `json:"c,omitempty"`
	// Beat is the sender's heartbeat in ms, so that routers with different
	// heartbeats expire each other correctly.
	Beat int64 `json:"hb,omitempty"`
	// Origin is what the sender's relay frames carry as their origin: the
	// remote tracks of a router that went silent end with it.
	Origin uint64 `json:"o,omitempty"`
	// Batches: the sender takes relay batches (frame.go); routers that
	// predate them do not say so, and are sent frames one per message.
	Batches bool `json:"b,omitempty"`
}

// interest is what this router knows of the others' interest.
type interest struct {
	mu      sync.Mutex
	entries map[string]*interestEntry // by conversation
	routers map[string]*remoteRouter  // by router id
}

// interestEntry counts the routers interested in one conversation.
type interestEntry struct {
	conv string
	// routers, and of them those that take no batches (plain), are read
	// on the packet path.
	routers, plain atomic.Int32
	// Guarded by interest.mu: the routers (true: it takes batches), and
	// the tracks holding the entry (it is forgotten once neither has any).
	set   map[string]bool
	holds int
}

// count updates the entry's counts after a change of its set. Callers
// hold interest.mu.
func (e *interestEntry) count() {
	plain := 0
	for _, batches := range e.set {
		if !batches {
			plain++
		}
	}
	e.routers.Store(int32(len(e.set)))
	e.plain.Store(int32(plain))
}

// remoteRouter is another router's last announcement.
type remoteRouter struct {
	convs  []string
	seen   time.Time
	expiry time.Duration
	origin uint64 // of its frames; 0: not announced
}

func (in *interest) init() {
	in.entries = make(map[string]*interestEntry)
	in.routers = make(map[string]*remoteRouter)
}

// entryLocked returns conv's entry, making it. Callers hold in.mu.
func (in *interest) entryLocked(conv string) *interestEntry {
	e := in.entries[conv]
	if e == nil {
		e = &interestEntry{conv: conv, set: make(map[string]bool)}
		in.entries[conv] = e
	}
	return e
}

// forgetLocked drops e once nothing refers to it. Callers hold in.mu.
func (in *interest) forgetLocked(e *interestEntry) {
	if e.holds == 0 && len(e.set) == 0 && in.entries[e.conv] == e {
		delete(in.entries, e.conv)
	}
}

// hold returns conv's entry for a track to read until release.
func (in *interest) hold(conv string) *interestEntry {
	in.mu.Lock()
	defer in.mu.Unlock()
	e := in.entryLocked(conv)
	e.holds++
	return e
}

// release lets go of an entry of hold.
func (in *interest) release(e *interestEntry) {
	in.mu.Lock()
	defer in.mu.Unlock()
	e.holds--
	in.forgetLocked(e)
}

// set records that router, whose frames carry origin and which takes
// batches or not, listens in convs (nil: nowhere, and it is forgotten).
func (in *interest) set(router string, origin uint64, batches bool, convs []string, now time.Time, expiry time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	r := in.routers[router]
	var old []string
	if r != nil {
		old = r.convs
	}
	for _, c := range old {
		if !slices.Contains(convs, c) {
			e := in.entries[c]
			if e == nil {
				continue
			}
			delete(e.set, router)
			e.count()
			in.forgetLocked(e)
		}
	}
	for _, c := range convs {
		e := in.entryLocked(c)
		if b, ok := e.set[router]; !ok || b != batches {
			e.set[router] = batches
			e.count()
		}
	}
	if convs == nil {
		delete(in.routers, router)
		return
	}
	if r == nil {
		r = &remoteRouter{}
		in.routers[router] = r
	}
	r.convs, r.seen, r.expiry, r.origin = convs, now, expiry, origin
}

// goneRouter is a router forgotten by expire.
type goneRouter struct {
	id     string
	origin uint64
}

// expire forgets the routers not heard from in time.
func (in *interest) expire(now time.Time) (gone []goneRouter) {
	in.mu.Lock()
	for id, r := range in.routers {
		if now.Sub(r.seen) > r.expiry {
			gone = append(gone, goneRouter{id, r.origin})
		}
	}
	in.mu.Unlock()
	for _, g := range gone {
		in.set(g.id, 0, false, nil, now, 0)
	}
	return gone
}

// relayed returns the number of conversations relayed out (some other
// router listens in them) and of routers heard from.
func (in *interest) relayed() (convs, routers int) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, e := range in.entries {
		if len(e.set) > 0 {
			convs++
		}
	}
	return convs, len(in.routers)
}

// onInterest handles another router's announcement.
func (n *Node) onInterest(m *nats.Msg) {
	var im interestMsg
	if err := json.Unmarshal(m.Data, &im); err != nil || im.Router == "" || im.Router == n.cfg.ID {
		return
	}
	switch im.Op {
	case opHeartbeat:
		beat := time.Duration(im.Beat) * time.Millisecond
		if beat <= 0 {
			beat = DefaultHeartbeat
		}
		convs := im.Convs
		if convs == nil {
			convs = []string{}
		}
		n.interest.set(im.Router, im.Origin, im.Batches, convs, time.Now(), 3*beat)
	case opBye:
		n.interest.set(im.Router, 0, false, nil, time.Now(), 0)
		n.log.Info("cluster: router left", "peer", im.Router)
		// Its tracks normally ended with end frames before; any left
		// end now rather than after RemoteIdle.
		n.endOrigin(im.Origin)
	case opSync:
		n.forceAnnounce.Store(true)
		n.Changed()
	}
}

// publishInterest announces this router's interest.
func (n *Node) publishInterest(op string, convs []string) {
	b, err := json.Marshal(interestMsg{Op: op, Router: n.cfg.ID, Convs: convs, Beat: n.cfg.Heartbeat.Milliseconds(), Origin: n.origin, Batches: true})
	if err != nil {
		return
	}
	if err := n.nc.Publish(n.cfg.Prefix+"interest", b); err != nil {
		n.log.Debug("cluster: interest not announced", "err", err)
	}
}

// loop follows the conversations this router listens in: it subscribes to
// their relay subjects, leaves those it no longer listens in, announces
// them, and expires silent routers and idle remote tracks.
func (n *Node) loop() {
	defer n.bg.Done()
	t := time.NewTicker(n.cfg.Heartbeat)
	defer t.Stop()
	var last []string
	for {
		beat := false
		select {
		case <-n.quit:
			return
		case <-n.kick:
		case now := <-t.C:
			beat = true
			for _, g := range n.interest.expire(now) {
				// A silent router is dead or cut off: its publishers
				// leave the speaker slots here now (after three of its
				// heartbeats), not after RemoteIdle.
				ended := n.endOrigin(g.origin)
				n.log.Info("cluster: router silent: no longer relayed to, its tracks ended", "peer", g.id, "tracks", ended)
			}
			n.expireRemote(now)
		}
		convs := n.rooms.Listening()
		slices.Sort(convs)
		n.follow(convs)
		if beat || n.forceAnnounce.Swap(false) || !slices.Equal(convs, last) {
			if convs == nil {
				convs = []string{}
			}
			n.publishInterest(opHeartbeat, convs)
			last = convs
		}
	}
}

// Relaying returns the number of other routers this router relays
// conversation conv to now (those listening in it).
func (n *Node) Relaying(conv string) int {
	n.interest.mu.Lock()
	defer n.interest.mu.Unlock()
	if e := n.interest.entries[conv]; e != nil {
		return len(e.set)
	}
	return 0
}
