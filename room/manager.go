package room

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/beepvoice/router/claim"
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
}

// DefaultMembershipTTL is the default Config.MembershipTTL.
const DefaultMembershipTTL = 24 * time.Hour

// Errors of the Manager. ErrLimit wraps every refusal for a configured
// limit; the message says which.
var (
	ErrClosed               = errors.New("room manager closed")
	ErrLimit                = errors.New("limit reached")
	ErrTooManyDevices       = fmt.Errorf("%w: too many devices for this user", ErrLimit)
	ErrConversationFull     = fmt.Errorf("%w: conversation full", ErrLimit)
	ErrTooManyConversations = fmt.Errorf("%w: too many conversations", ErrLimit)
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

// janitor forgets users that have had no device for MembershipTTL.
func (m *Manager) janitor() {
	defer close(m.janitorDone)
	tick := time.NewTicker(min(m.cfg.MembershipTTL/2, time.Minute))
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

// expire forgets the users idle since before now-MembershipTTL.
func (m *Manager) expire(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		if len(u.devices) > 0 || u.idleSince.IsZero() || now.Sub(u.idleSince) < m.cfg.MembershipTTL {
			continue
		}
		if c := u.conv.Swap(nil); c != nil {
			m.leave(u, c)
			m.log.Info("membership expired: no device for a while", "user", u.ID, "conversation", c.ID, "ttl", m.cfg.MembershipTTL)
		}
		delete(m.users, u.ID)
	}
}

// user returns the user with id, creating it. Callers hold m.mu.
func (m *Manager) user(id string) *User {
	u, ok := m.users[id]
	if !ok {
		u = &User{ID: id, devices: make(map[string]*device), idleSince: time.Now()}
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
func (m *Manager) Join(userID, convID string) error {
	c, err := m.join(userID, convID)
	if c != nil {
		c.sync()
	}
	return err
}

// join is Join under m.mu; it returns the conversation to reassign.
func (m *Manager) join(userID, convID string) (*Conversation, error) {
	if userID == "" || convID == "" {
		return nil, errors.New("room: join needs a user and a conversation")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	u := m.user(userID)
	old := u.conv.Load()
	if old != nil && old.ID == convID {
		return nil, nil
	}
	c, ok := m.convs[convID]
	if !ok && m.cfg.MaxConversations > 0 && len(m.convs) >= m.cfg.MaxConversations {
		return nil, fmt.Errorf("%w (%d)", ErrTooManyConversations, m.cfg.MaxConversations)
	}
	if ok && m.cfg.MaxPeersPerConversation > 0 {
		if n := devices(c) + len(u.devices); n > m.cfg.MaxPeersPerConversation {
			return nil, fmt.Errorf("%w (%d devices)", ErrConversationFull, m.cfg.MaxPeersPerConversation)
		}
	}
	if !ok {
		c = newConversation(convID)
		m.convs[convID] = c
	}
	// The gate reads u.conv on every packet: from here on the user's
	// packets are for c, and forwarding into old stops at once.
	u.conv.Store(c)
	if old != nil {
		m.leave(u, old)
	}
	c.add(u, u.connectedDevices(), u.tracks())
	m.log.Info("joined conversation", "user", userID, "conversation", convID)
	return c, nil
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
	if err := m.admit(u, old); err != nil {
		m.forget(u)
		m.mu.Unlock()
		p.Close()
		return nil, err
	}
	d.user = u
	u.idleSince = time.Time{}
	u.devices[c.ClientID] = d
	m.mu.Unlock()

	if old != nil {
		old.peer.Close() // logged by the peer
		m.log.Info("device replaced by a new connection", "user", c.UserID, "client", c.ClientID)
	}
	return p, nil
}

// admit checks the device limits for a new device of u (replacing old, if
// any). Callers hold m.mu.
func (m *Manager) admit(u *User, old *device) error {
	if max := m.cfg.MaxPeersPerUser; max > 0 && old == nil && len(u.devices) >= max {
		return fmt.Errorf("%w (%d)", ErrTooManyDevices, max)
	}
	if max := m.cfg.MaxPeersPerConversation; max > 0 && old == nil {
		if c := u.conv.Load(); c != nil && devices(c) >= max {
			return fmt.Errorf("%w (%d devices)", ErrConversationFull, max)
		}
	}
	return nil
}

// devices counts the devices of c's members, connecting ones included, and
// its participants: a device counts from its /connect on, so that devices
// still in their ICE and DTLS handshakes cannot together overfill c.
// Callers hold m.mu.
func devices(c *Conversation) int {
	n := len(c.participants)
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
	}
	if len(u.devices) == 0 {
		u.idleSince = time.Now()
	}
	if c := u.conv.Load(); c != nil {
		c.removeDevice(d)
	}
	m.forget(u)
}

// trackStarted adds t to its user's conversation, and returns once t is
// forwarded there.
func (m *Manager) trackStarted(d *device, t *Track) {
	m.mu.Lock()
	d.published = append(d.published, t)
	c := t.User().conv.Load()
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
