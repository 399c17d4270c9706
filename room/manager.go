package room

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/rtc"
)

// Sink receives the packets of published tracks: the pipeline implements it.
type Sink interface {
	// Open starts a track; the returned TrackSink gets its packets.
	Open(t *Track) (rtc.TrackSink, error)
}

// Config configures a Manager.
type Config struct {
	// Media configures the media engine the Manager runs.
	Media rtc.Config
	// Sink receives every published track's packets.
	Sink Sink
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// MaxPeersPerUser bounds one user's devices (0: no limit).
	MaxPeersPerUser int
	// MaxPeersPerConversation bounds the devices in one conversation,
	// counting those still connecting (0: no limit).
	MaxPeersPerConversation int
	// MaxConversations bounds the conversations of the process (0: no
	// limit).
	MaxConversations int
	// MembershipTTL forgets a user that has had no device for this long,
	// membership included, so that users who join and never connect do not
	// pile up. Zero means DefaultMembershipTTL.
	MembershipTTL time.Duration
	// IdleMembershipTTL forgets, sooner, a user that has never had a
	// device: one that joined (last joined this long ago) and never
	// connected, so that joins that never connect cannot pin conversations
	// (and MaxConversations) for MembershipTTL. Zero means
	// DefaultIdleMembershipTTL; it is never longer than MembershipTTL.
	IdleMembershipTTL time.Duration
	// PeerGone reports whether a device's peer is gone: its client has
	// most likely left, but the peer is not closed yet (pion v3 does not
	// see DTLS close_notify, so a closed client is only released at the
	// ICE failed timeout). A device that is gone still counts toward
	// MaxPeersPerUser and MaxPeersPerConversation, but when a limit would
	// refuse a device or a join, the oldest gone device in the way is
	// closed instead. It is called with Manager.mu held and must not block.
	// Nil means DefaultPeerGone.
	PeerGone func(*rtc.Peer) bool
	// Membership, if set, shares memberships with the other routers of a
	// cluster (package cluster): Join tells it of every join made here,
	// and a device of a user who is a member of no conversation here takes
	// the membership it names. Nil: memberships are this router's own.
	Membership Membership
	// Messages, if set, carries the participants' messages to the other
	// routers of a cluster. Nil: they reach this router's participants
	// only.
	Messages MessageRelay
	// Mixing, if set, is the mixing stage (the pipeline's, see
	// pipeline.Pipeline.Mixing): devices with fewer slots than the
	// active speakers they would hear get the others mixed (mixing.go).
	// Nil: devices hear only forwarded speakers.
	Mixing Mixing
	// Changed, if set, is called whenever the conversations in which a
	// device of this router listens may have changed (a join, a leave, a
	// device connected or gone), for the cluster's interest in relayed
	// media (Listening). It is called with Manager.mu held and must not
	// block.
	Changed func()
}

// DefaultMembershipTTL is the default Config.MembershipTTL.
const DefaultMembershipTTL = 24 * time.Hour

// DefaultIdleMembershipTTL is the default Config.IdleMembershipTTL.
const DefaultIdleMembershipTTL = 2 * time.Minute

// DefaultPeerGone is the default Config.PeerGone: a peer whose ICE state is
// disconnected (nothing, not even a keepalive, received for
// ICE_DISCONNECTED_TIMEOUT), failed or closed is gone. A peer still
// connecting (new, checking) or connected is not.
func DefaultPeerGone(p *rtc.Peer) bool {
	switch p.ICEConnectionState() {
	case webrtc.ICEConnectionStateDisconnected, webrtc.ICEConnectionStateFailed, webrtc.ICEConnectionStateClosed:
		return true
	}
	return false
}

// Errors of the Manager. ErrLimit wraps every refusal for a configured
// limit; the message says which.
var (
	ErrClosed               = errors.New("room manager closed")
	ErrLimit                = errors.New("limit reached")
	ErrTooManyDevices       = fmt.Errorf("%w: too many devices for this user", ErrLimit)
	ErrConversationFull     = fmt.Errorf("%w: conversation full", ErrLimit)
	ErrTooManyConversations = fmt.Errorf("%w: too many conversations", ErrLimit)
	// ErrReplaced is the reason (rtc.Peer.Err) of a device's peer that a
	// newer connection of the same device replaced.
	ErrReplaced = errors.New("replaced by a newer connection of the same device")
	// ErrEvicted is the reason of a gone device's peer closed to make room
	// for a new device under a device limit.
	ErrEvicted = errors.New("gone, and closed to make room for a new device")
)

// Manager owns the users, their devices and the conversations of the
// router, and the media engine their peers run on.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	engine *rtc.Engine

	mu     sync.Mutex
	users  map[string]*User
	convs  map[string]*Conversation
	closed bool

	stopJanitor chan struct{}
	janitorDone chan struct{}

	// replaceLog throttles "device replaced" (once a minute, then a count):
	// a client reconnecting in a loop is a normal action, not an incident.
	replaceLog throttle.Gate
}

// New returns a Manager and starts its media engine.
func New(cfg Config) (*Manager, error) {
	if cfg.Sink == nil {
		return nil, errors.New("room: Config.Sink is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Media.Logger == nil {
		cfg.Media.Logger = cfg.Logger
	}
	if cfg.MembershipTTL <= 0 {
		cfg.MembershipTTL = DefaultMembershipTTL
	}
	if cfg.IdleMembershipTTL <= 0 {
		cfg.IdleMembershipTTL = DefaultIdleMembershipTTL
	}
	cfg.IdleMembershipTTL = min(cfg.IdleMembershipTTL, cfg.MembershipTTL)
	if cfg.PeerGone == nil {
		cfg.PeerGone = DefaultPeerGone
	}
	engine, err := rtc.NewEngine(cfg.Media)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cfg:         cfg,
		log:         cfg.Logger,
		engine:      engine,
		users:       make(map[string]*User),
		convs:       make(map[string]*Conversation),
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	go m.janitor()
	return m, nil
}

// janitor forgets users that have had no device for MembershipTTL, and
// those that never had one for IdleMembershipTTL.
func (m *Manager) janitor() {
	defer close(m.janitorDone)
	tick := time.NewTicker(min(m.cfg.IdleMembershipTTL/2, time.Minute))
	defer tick.Stop()
	for {
		select {
		case <-m.stopJanitor:
			return
		case now := <-tick.C:
			m.expire(now)
		}
	}
}

// expire forgets the users idle since before now-MembershipTTL, and those
// that never had a device since before now-IdleMembershipTTL.
func (m *Manager) expire(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		ttl, why := m.cfg.MembershipTTL, "membership expired: no device for a while"
		if !u.hadDevice {
			ttl, why = m.cfg.IdleMembershipTTL, "membership expired: joined and never connected"
		}
		if len(u.devices) > 0 || u.idleSince.IsZero() || now.Sub(u.idleSince) < ttl {
			continue
		}
		if c := u.conv.Swap(nil); c != nil {
			m.leave(u, c)
			m.log.Info(why, "user", u.ID, "conversation", c.ID, "ttl", ttl)
			m.changed()
		}
		delete(m.users, u.ID)
	}
}

// user returns the user with id, creating it. Callers hold m.mu.
func (m *Manager) user(id string) *User {
	u, ok := m.users[id]
	if !ok {
		u = &User{ID: id, devices: make(map[string]*device), since: make(map[string]time.Time), idleSince: time.Now()}
		m.users[id] = u
	}
	return u
}

// forget drops a user that has no devices and no membership. Callers hold
// m.mu.
func (m *Manager) forget(u *User) {
	if len(u.devices) == 0 && u.conv.Load() == nil {
		delete(m.users, u.ID)
	}
}

// Join makes the user a member of conversation convID, moving it out of the
// conversation it was in. All the user's devices follow: their tracks are
// forwarded to, and their slots receive from, the new conversation only.
// Permission must have been checked by the caller.
//
// A join refused for a limit leaves nothing behind: no user, no membership
// and no conversation that were not there before.
func (m *Manager) Join(userID, convID string) error {
	c, evicted, err := m.join(userID, convID)
	closePeers(evicted)
	if c != nil {
		c.sync()
	}
	if err == nil && m.cfg.Membership != nil {
		m.cfg.Membership.Joined(userID, convID)
	}
	return err
}

// join is Join under m.mu; it returns the conversation to reassign and the
// peers of the gone devices it evicted, for the caller to close.
func (m *Manager) join(userID, convID string) (*Conversation, []*rtc.Peer, error) {
	if userID == "" || convID == "" {
		return nil, nil, errors.New("room: join needs a user and a conversation")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, ErrClosed
	}
	u := m.users[userID] // created only once the join is admitted
	var old *Conversation
	own := 0
	if u != nil {
		old = u.conv.Load()
		own = len(u.devices)
	}
	if old != nil && old.ID == convID {
		return nil, nil, nil
	}
	c, ok := m.convs[convID]
	if !ok && m.cfg.MaxConversations > 0 && len(m.convs) >= m.cfg.MaxConversations {
		return nil, nil, fmt.Errorf("%w (%d)", ErrTooManyConversations, m.cfg.MaxConversations)
	}
	var evicted []*rtc.Peer
	if max := m.cfg.MaxPeersPerConversation; ok && max > 0 {
		if need := devices(c) + own - max; need > 0 {
			holders := members(c)
			if u != nil {
				holders = append(holders, u)
			}
			g := m.gone(holders, nil)
			if len(g) < need {
				return nil, nil, fmt.Errorf("%w (%d devices)", ErrConversationFull, max)
			}
			evicted = m.evict(g[:need])
		}
	}
	if u == nil {
		u = m.user(userID)
	}
	if len(u.devices) == 0 {
		u.idleSince = time.Now() // the idle TTLs count from the last join
	}
	if !ok {
		c = newConversation(convID, m.cfg.Mixing)
		m.convs[convID] = c
	}
	// The gate reads u.conv on every packet: from here on the user's
	// packets are for c, and forwarding into old stops at once.
	u.conv.Store(c)
	if old != nil {
		m.leave(u, old)
	}
	c.add(u, u.connectedDevices(), u.tracks())
	m.changed()
	m.log.Info("joined conversation", "user", userID, "conversation", convID)
	return c, evicted, nil
}

// Leave takes the user out of its conversation, if any.
func (m *Manager) Leave(userID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.users[userID]
	if !ok {
		return
	}
	if old := u.conv.Swap(nil); old != nil {
		m.leave(u, old)
		m.changed()
	}
	m.forget(u)
}

// leave removes u's devices and tracks from c, and ends c once it is
// empty. Callers hold m.mu.
func (m *Manager) leave(u *User, c *Conversation) {
	if c.remove(u) {
		m.end(c)
	}
}

// end forgets c, left empty, and stops its goroutine. Callers hold m.mu.
func (m *Manager) end(c *Conversation) {
	if m.convs[c.ID] == c {
		delete(m.convs, c.ID)
	}
	c.stop()
}

// Conversation returns the conversation with id, or nil.
func (m *Manager) Conversation(id string) *Conversation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.convs[id]
}

// User returns the user with id, or nil.
func (m *Manager) User(id string) *User {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.users[id]
}

// Peer returns the peer of the user's device clientID, or nil.
func (m *Manager) Peer(userID, clientID string) *rtc.Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u, ok := m.users[userID]; ok {
		if d, ok := u.devices[clientID]; ok {
			return d.peer
		}
	}
	return nil
}

// Stats is a snapshot of the rooms' state and the media counts.
type Stats struct {
	rtc.Stats
	// Users and Conversations are current sizes.
	Users, Conversations int
}

// SharedAddrs returns the local addresses of the ICE socket all peers
// share, if they share one (rtc.Engine.SharedAddrs).
func (m *Manager) SharedAddrs() []net.Addr { return m.engine.SharedAddrs() }

// Stats returns the current counts.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	s := Stats{Users: len(m.users), Conversations: len(m.convs)}
	m.mu.Unlock()
	s.Stats = m.engine.Stats()
	return s
}

// NewPeer creates the peer connection of one device. A device that already
// has a peer replaces it: the older one is closed.
func (m *Manager) NewPeer(c claim.Claim) (*rtc.Peer, error) {
	d := &device{m: m}
	p, err := m.engine.NewPeer(c, d, rtc.PeerOptions{})
	if errors.Is(err, rtc.ErrClosed) {
		return nil, ErrClosed
	}
	if err != nil {
		return nil, err
	}
	d.peer = p

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		p.Close()
		return nil, ErrClosed
	}
	u := m.user(c.UserID)
	old := u.devices[c.ClientID]
	evicted, err := m.admit(u, old)
	if err != nil {
		m.forget(u)
		m.mu.Unlock()
		p.Close()
		return nil, err
	}
	d.user = u
	u.idleSince = time.Time{}
	u.hadDevice = true
	u.devices[c.ClientID] = d
	u.since[c.ClientID] = time.Now()
	m.mu.Unlock()

	closePeers(evicted)
	m.adoptMembership(u)

	if old != nil {
		old.peer.CloseWith(ErrReplaced) // logged by the peer
		if ok, n := m.replaceLog.Allow(time.Now()); ok {
			m.log.Info("device replaced by a new connection", "user", c.UserID, "client", c.ClientID, "suppressed", n)
		}
	}
	return p, nil
}

// admit checks the device limits for a new device of u (replacing old, if
// any). Where a limit is reached, it evicts the oldest gone devices in the
// way (Config.PeerGone), if there are enough of them to make room, and
// returns their peers for the caller to close once it has released m.mu;
// a device that is not gone is never evicted. Callers hold m.mu.
func (m *Manager) admit(u *User, old *device) ([]*rtc.Peer, error) {
	if old != nil {
		return nil, nil // a replacement: the device counts already
	}
	var out []goneDevice
	if max := m.cfg.MaxPeersPerUser; max > 0 {
		if need := len(u.devices) - max + 1; need > 0 {
			g := m.gone([]*User{u}, nil)
			if len(g) < need {
				return nil, fmt.Errorf("%w (%d)", ErrTooManyDevices, max)
			}
			out = g[:need]
		}
	}
	if max := m.cfg.MaxPeersPerConversation; max > 0 {
		// u is a member of c: the devices of u planned out count in c.
		if c := u.conv.Load(); c != nil {
			if need := devices(c) - len(out) - max + 1; need > 0 {
				g := m.gone(members(c), out)
				if len(g) < need {
					return nil, fmt.Errorf("%w (%d devices)", ErrConversationFull, max)
				}
				out = append(out, g[:need]...)
			}
		}
	}
	return m.evict(out), nil
}

// goneDevice is a device of a user that Config.PeerGone says is gone.
type goneDevice struct {
	u     *User
	id    string
	d     *device
	since time.Time
}

// gone returns the gone devices of users, except those in skip, oldest
// (earliest admitted) first. Callers hold m.mu.
func (m *Manager) gone(users []*User, skip []goneDevice) []goneDevice {
	var g []goneDevice
	for _, u := range users {
		for id, d := range u.devices {
			if d.peer == nil || !m.cfg.PeerGone(d.peer) {
				continue
			}
			if slices.ContainsFunc(skip, func(s goneDevice) bool { return s.d == d }) {
				continue
			}
			g = append(g, goneDevice{u: u, id: id, d: d, since: u.since[id]})
		}
	}
	slices.SortFunc(g, func(a, b goneDevice) int { return a.since.Compare(b.since) })
	return g
}

// evict forgets the gone devices g at once, so that they stop counting
// toward the limits, and returns their peers, which the caller closes once
// it has released m.mu (the peers' Closed then finds them forgotten).
// Callers hold m.mu.
func (m *Manager) evict(g []goneDevice) []*rtc.Peer {
	var peers []*rtc.Peer
	for _, e := range g {
		if e.u.devices[e.id] != e.d {
			continue
		}
		delete(e.u.devices, e.id)
		delete(e.u.since, e.id)
		if len(e.u.devices) == 0 {
			e.u.idleSince = time.Now()
		}
		if c := e.u.conv.Load(); c != nil {
			c.removeDevice(e.d)
		}
		peers = append(peers, e.d.peer)
		m.changed()
		m.log.Info("gone device evicted to make room for another", "user", e.u.ID, "client", e.id)
	}
	return peers
}

// closePeers closes the peers of evicted devices. Callers do not hold m.mu:
// each peer's Closed takes it.
func closePeers(peers []*rtc.Peer) {
	for _, p := range peers {
		p.CloseWith(ErrEvicted)
	}
}

// members returns c's members. Callers hold m.mu.
func members(c *Conversation) []*User {
	us := make([]*User, 0, len(c.members))
	for u := range c.members {
		us = append(us, u)
	}
	return us
}

// devices counts the devices of c's members, connecting ones included, and
// its participants connected here: a device counts from its /connect on,
// so that devices still in their ICE and DTLS handshakes cannot together
// overfill c. Callers hold m.mu.
func devices(c *Conversation) int {
	n := 0
	for _, p := range c.participants {
		if !p.remote {
			n++
		}
	}
	for u := range c.members {
		n += len(u.devices)
	}
	return n
}

// deviceConnected makes d's slots receive from its user's conversation.
func (m *Manager) deviceConnected(d *device) {
	if c := m.connected(d); c != nil {
		c.sync()
	}
}

// connected marks d connected under m.mu and returns the conversation to
// reassign.
func (m *Manager) connected(d *device) *Conversation {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := d.user
	if u == nil || u.devices[d.peer.Claim.ClientID] != d {
		return nil // never admitted, replaced or closed meanwhile
	}
	d.connected = true
	d.slots = d.peer.DownTracks()
	c := u.conv.Load()
	if c != nil {
		c.add(u, []*device{d}, nil)
		m.changed()
	}
	return c
}

// deviceClosed forgets d.
func (m *Manager) deviceClosed(d *device) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u := d.user
	if u == nil {
		return // refused at admission
	}
	if id := d.peer.Claim.ClientID; u.devices[id] == d {
		delete(u.devices, id)
		delete(u.since, id)
	}
	if len(u.devices) == 0 {
		u.idleSince = time.Now()
	}
	if c := u.conv.Load(); c != nil {
		c.removeDevice(d)
		m.changed()
	}
	m.forget(u)
}

// trackStarted adds t to its user's conversation, and returns once t is
// forwarded there.
func (m *Manager) trackStarted(d *device, t *Track) {
	m.mu.Lock()
	d.published = append(d.published, t)
	c := t.User().conv.Load()
	if u := t.User(); u.devices[d.peer.Claim.ClientID] != d {
		c = nil // evicted or replaced meanwhile: its peer is closing
	}
	if c != nil {
		c.add(t.User(), nil, []*Track{t})
	}
	m.mu.Unlock()
	if c != nil {
		c.sync()
	}
}

// trackEnded removes the track of up from its user's conversation.
func (m *Manager) trackEnded(d *device, up *rtc.UpTrack) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := slices.IndexFunc(d.published, func(t *Track) bool { return t.UpTrack == up })
	if i < 0 {
		return
	}
	t := d.published[i]
	d.published = slices.Delete(d.published, i, i+1)
	if c := t.User().conv.Load(); c != nil {
		c.removeTrack(t)
	}
	t.targets.Store(nil)
}

// Close closes every peer and waits, until ctx ends, for their goroutines
// (and so for their tracks' final packets and bites) to finish.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if !m.closed {
		close(m.stopJanitor)
	}
	m.closed = true
	m.mu.Unlock()
	err := m.engine.Close(ctx)
	<-m.janitorDone
	m.mu.Lock()
	for id, c := range m.convs {
		delete(m.convs, id)
		c.stop()
	}
	m.mu.Unlock()
	return err
}
