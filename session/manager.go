package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// Sink receives the packets of published tracks: the pipeline implements it.
type Sink interface {
	// Open starts a track; the returned TrackSink gets its packets.
	Open(t *Track) (TrackSink, error)
}

// TrackSink takes the packets of one track, from one goroutine.
type TrackSink interface {
	// WriteRTP handles one RTP packet; raw is reused after it returns.
	WriteRTP(raw []byte, arrival time.Time) error
	// Close ends the track.
	Close()
}

// Config configures a Manager.
type Config struct {
	// Sink receives every published track's packets.
	Sink Sink
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// ICEIPs restricts ICE gathering to these local addresses; empty means
	// every non-loopback address. A loopback address enables loopback
	// candidates.
	ICEIPs []net.IP
	// PublicIPs are announced instead of the local addresses (1:1 NAT).
	PublicIPs []string
	// UDPPort, when positive, carries all ICE traffic on one UDP port.
	UDPPort int
	// ICEServers are STUN/TURN servers for gathering.
	ICEServers []webrtc.ICEServer
	// ConnectTimeout closes a peer that has not connected by then.
	ConnectTimeout time.Duration
	// DisconnectedTimeout, FailedTimeout and KeepaliveInterval tune ICE;
	// zero keeps pion's defaults (5 s, 25 s, 2 s).
	DisconnectedTimeout, FailedTimeout, KeepaliveInterval time.Duration
	// MaxSlots bounds the receiving audio m-lines of one offer.
	MaxSlots int
	// MaxPeersPerUser bounds one user's devices (0: no limit).
	MaxPeersPerUser int
	// MaxPeersPerConversation bounds the devices in one conversation,
	// counting those still connecting (0: no limit).
	MaxPeersPerConversation int
	// MaxConversations bounds the conversations of the process (0: no
	// limit).
	MaxConversations int
	// TrackBuffer bounds, in bytes, the received audio of one track that
	// waits for its reader; past it packets are dropped and counted (stale
	// audio is worth less than late audio). Zero means DefaultTrackBuffer.
	TrackBuffer int
	// MembershipTTL forgets a user that has had no device for this long,
	// membership included, so that users who join and never connect do not
	// pile up. Zero means DefaultMembershipTTL.
	MembershipTTL time.Duration
	// PionEgress sends every slot's packets through pion's generic write
	// path (interceptors, SRTP session, ICE connection) instead of the
	// direct path of egress.go. It costs more CPU per packet; it is there
	// to compare and as a fallback.
	PionEgress bool
}

// Defaults for Config fields left zero.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultMaxSlots       = 16
	DefaultMembershipTTL  = 24 * time.Hour
)

// Manager owns all peers, users and conversations of the router.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	api   *webrtc.API
	mux   ice.UDPMux
	socks *sockets

	mu     sync.Mutex
	users  map[string]*User
	convs  map[string]*Conversation
	peers  map[*Peer]struct{}
	closed bool

	// wg counts every goroutine the Manager's peers start.
	wg sync.WaitGroup

	tracks atomic.Int64
	count  counters

	stopJanitor chan struct{}
	janitorDone chan struct{}
}

// counters are the Manager's cumulative counts. Track readers add to them in
// batches; slots keep their own and hand them over when their peer closes.
type counters struct {
	packetsIn, bytesIn, malformed atomic.Uint64
	packetsOut, bytesOut          atomic.Uint64 // of closed peers' slots
	nacks, plis                   atomic.Uint64
	resent                        atomic.Uint64
	nacksSent                     atomic.Uint64
	overload                      atomic.Uint64
}

// Errors of the Manager. ErrLimit wraps every refusal for a configured
// limit; the message says which.
var (
	ErrClosed               = errors.New("session manager closed")
	ErrLimit                = errors.New("limit reached")
	ErrTooManyDevices       = fmt.Errorf("%w: too many devices for this user", ErrLimit)
	ErrConversationFull     = fmt.Errorf("%w: conversation full", ErrLimit)
	ErrTooManyConversations = fmt.Errorf("%w: too many conversations", ErrLimit)
)

// New returns a Manager. It opens the UDP port, if one is configured.
func New(cfg Config) (*Manager, error) {
	if cfg.Sink == nil {
		return nil, errors.New("session: Config.Sink is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxSlots <= 0 {
		cfg.MaxSlots = DefaultMaxSlots
	}
	if cfg.TrackBuffer <= 0 {
		cfg.TrackBuffer = DefaultTrackBuffer
	}
	if cfg.MembershipTTL <= 0 {
		cfg.MembershipTTL = DefaultMembershipTTL
	}
	m := &Manager{
		cfg:         cfg,
		log:         cfg.Logger,
		users:       make(map[string]*User),
		convs:       make(map[string]*Conversation),
		peers:       make(map[*Peer]struct{}),
		stopJanitor: make(chan struct{}),
		janitorDone: make(chan struct{}),
	}
	socks, err := newSockets()
	if err != nil {
		return nil, err
	}
	api, mux, err := newAPI(&cfg, &m.count, socks)
	if err != nil {
		return nil, err
	}
	m.api, m.mux, m.socks = api, mux, socks
	go m.janitor()
	return m, nil
}

// janitor forgets users that have had no device for MembershipTTL, and
// sends the slots' sender reports.
func (m *Manager) janitor() {
	defer close(m.janitorDone)
	every := min(m.cfg.MembershipTTL/2, time.Minute)
	tick := time.NewTicker(every)
	defer tick.Stop()
	reports := time.NewTicker(reportInterval)
	defer reports.Stop()
	for {
		select {
		case <-m.stopJanitor:
			return
		case now := <-tick.C:
			m.expire(now)
		case now := <-reports.C:
			for _, p := range m.connectedPeers() {
				p.sendReports(now)
			}
		}
	}
}

// connectedPeers returns the peers that are connected now.
func (m *Manager) connectedPeers() []*Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	peers := make([]*Peer, 0, len(m.peers))
	for p := range m.peers {
		if p.connectedFlag {
			peers = append(peers, p)
		}
	}
	return peers
}

// expire forgets the users idle since before now-MembershipTTL.
func (m *Manager) expire(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, u := range m.users {
		if len(u.peers) > 0 || u.idleSince.IsZero() || now.Sub(u.idleSince) < m.cfg.MembershipTTL {
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
		u = &User{ID: id, peers: make(map[string]*Peer), idleSince: time.Now()}
		m.users[id] = u
	}
	return u
}

// forget drops a user that has no devices and no membership. Callers hold m.mu.
func (m *Manager) forget(u *User) {
	if len(u.peers) == 0 && u.conv.Load() == nil {
		delete(m.users, u.ID)
	}
}

// Join makes the user a member of conversation convID, moving it out of the
// conversation it was in. All the user's devices follow: their tracks are
// forwarded to, and their slots receive from, the new conversation only.
// Permission must have been checked by the caller.
func (m *Manager) Join(userID, convID string) error {
	if userID == "" || convID == "" {
		return errors.New("session: join needs a user and a conversation")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	u := m.user(userID)
	old := u.conv.Load()
	if old != nil && old.ID == convID {
		return nil
	}
	c, ok := m.convs[convID]
	if !ok && m.cfg.MaxConversations > 0 && len(m.convs) >= m.cfg.MaxConversations {
		return fmt.Errorf("%w (%d)", ErrTooManyConversations, m.cfg.MaxConversations)
	}
	if ok && m.cfg.MaxPeersPerConversation > 0 {
		if n := devices(c) + len(u.peers); n > m.cfg.MaxPeersPerConversation {
			return fmt.Errorf("%w (%d devices)", ErrConversationFull, m.cfg.MaxPeersPerConversation)
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
	c.add(u, u.connectedPeers(), u.tracks())
	m.log.Info("joined conversation", "user", userID, "conversation", convID)
	return nil
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

// leave removes u's devices and tracks from c. Callers hold m.mu.
func (m *Manager) leave(u *User, c *Conversation) {
	if c.remove(u) {
		delete(m.convs, c.ID)
	}
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
func (m *Manager) Peer(userID, clientID string) *Peer {
	m.mu.Lock()
	defer m.mu.Unlock()
	if u, ok := m.users[userID]; ok {
		return u.peers[clientID]
	}
	return nil
}

// Stats is a snapshot of the Manager's state and cumulative counts.
type Stats struct {
	// Users, Conversations, Peers, Tracks and Slots are current sizes.
	Users, Conversations, Peers, Tracks, Slots int
	// DirectPeers counts the connected peers whose slots send directly
	// (egress.go) rather than through pion's write path.
	DirectPeers int
	// PacketsIn and BytesIn count RTP received from publishers; Malformed
	// the packets that did not parse.
	PacketsIn, BytesIn, Malformed uint64
	// PacketsOut and BytesOut count RTP forwarded to slots.
	PacketsOut, BytesOut uint64
	// NACKs and PLIs count feedback received from receivers. NACKs are
	// answered from the packet cache; PLIs mean nothing for audio.
	NACKs, PLIs uint64
	// Resent counts the packets the direct egress path sent again in
	// answer to NACKs (pion's responder, with EGRESS=pion, does not count).
	Resent uint64
	// NACKsSent counts NACKs the router sent to publishers for lost packets.
	NACKsSent uint64
	// Overload counts received packets dropped because their track's reader
	// was TrackBuffer behind.
	Overload uint64
}

// Stats returns the current counts.
func (m *Manager) Stats() Stats {
	m.mu.Lock()
	s := Stats{Users: len(m.users), Conversations: len(m.convs), Peers: len(m.peers)}
	for p := range m.peers {
		if !p.connectedFlag {
			continue // Answer may still be adding its slots; none has sent
		}
		if p.egress.Load() != nil {
			s.DirectPeers++
		}
		for _, sl := range p.slots {
			s.Slots++
			s.PacketsOut += sl.written.Load()
			s.BytesOut += sl.bytes.Load()
		}
	}
	m.mu.Unlock()
	s.Tracks = int(m.tracks.Load())
	s.PacketsIn = m.count.packetsIn.Load()
	s.BytesIn = m.count.bytesIn.Load()
	s.Malformed = m.count.malformed.Load()
	s.PacketsOut += m.count.packetsOut.Load()
	s.BytesOut += m.count.bytesOut.Load()
	s.NACKs = m.count.nacks.Load()
	s.Resent = m.count.resent.Load()
	s.PLIs = m.count.plis.Load()
	s.NACKsSent = m.count.nacksSent.Load()
	s.Overload = m.count.overload.Load()
	return s
}

// NewPeer creates the peer connection of one device. A device that already
// has a peer replaces it: the older one is closed.
func (m *Manager) NewPeer(c claim.Claim) (*Peer, error) {
	pc, err := m.api.NewPeerConnection(webrtc.Configuration{ICEServers: m.cfg.ICEServers})
	if err != nil {
		return nil, fmt.Errorf("new peer connection: %w", err)
	}
	p := newPeer(m, c, pc)

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		_ = pc.Close()
		return nil, ErrClosed
	}
	u := m.user(c.UserID)
	old := u.peers[c.ClientID]
	if err := m.admit(u, old); err != nil {
		m.forget(u)
		m.mu.Unlock()
		_ = pc.Close()
		return nil, err
	}
	p.user = u
	u.idleSince = time.Time{}
	u.peers[c.ClientID] = p
	m.peers[p] = struct{}{}
	m.mu.Unlock()

	if old != nil {
		old.log.Info("replaced by a new connection of the same device")
		old.Close()
	}
	p.start()
	return p, nil
}

// admit checks the device limits for a new peer of u (replacing old, if
// any). Callers hold m.mu.
func (m *Manager) admit(u *User, old *Peer) error {
	if max := m.cfg.MaxPeersPerUser; max > 0 && old == nil && len(u.peers) >= max {
		return fmt.Errorf("%w (%d)", ErrTooManyDevices, max)
	}
	if max := m.cfg.MaxPeersPerConversation; max > 0 && old == nil {
		if c := u.conv.Load(); c != nil && devices(c) >= max {
			return fmt.Errorf("%w (%d devices)", ErrConversationFull, max)
		}
	}
	return nil
}

// devices counts the devices of c's members, connecting ones included: a
// device counts from its /connect on, so that devices still in their ICE and
// DTLS handshakes cannot together overfill c. Callers hold m.mu.
func devices(c *Conversation) int {
	n := 0
	for u := range c.members {
		n += len(u.peers)
	}
	return n
}

// peerConnected makes p's slots receive from its user's conversation.
func (m *Manager) peerConnected(p *Peer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.user.peers[p.Claim.ClientID] != p {
		return // replaced or closed meanwhile
	}
	p.connectedFlag = true
	if c := p.user.conv.Load(); c != nil {
		c.add(p.user, []*Peer{p}, nil)
	}
}

// peerClosed forgets p.
func (m *Manager) peerClosed(p *Peer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.peers, p)
	if p.connectedFlag {
		for _, sl := range p.slots {
			m.count.packetsOut.Add(sl.written.Load())
			m.count.bytesOut.Add(sl.bytes.Load())
		}
	}
	u := p.user
	if u.peers[p.Claim.ClientID] == p {
		delete(u.peers, p.Claim.ClientID)
	}
	if len(u.peers) == 0 {
		u.idleSince = time.Now()
	}
	if c := u.conv.Load(); c != nil {
		c.removePeer(p)
	}
	m.forget(u)
}

// trackStarted adds t to its user's conversation.
func (m *Manager) trackStarted(t *Track) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tracks.Add(1)
	t.peer.tracksMu.Lock()
	t.peer.published = append(t.peer.published, t)
	t.peer.tracksMu.Unlock()
	if c := t.User().conv.Load(); c != nil {
		c.add(t.User(), nil, []*Track{t})
	}
}

// trackEnded removes t from its user's conversation.
func (m *Manager) trackEnded(t *Track) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tracks.Add(-1)
	t.peer.tracksMu.Lock()
	for i, pt := range t.peer.published {
		if pt == t {
			t.peer.published = append(t.peer.published[:i], t.peer.published[i+1:]...)
			break
		}
	}
	t.peer.tracksMu.Unlock()
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
	peers := make([]*Peer, 0, len(m.peers))
	for p := range m.peers {
		peers = append(peers, p)
	}
	m.mu.Unlock()
	for _, p := range peers {
		p.Close()
	}
	<-m.janitorDone
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("session: waiting for peers: %w", ctx.Err())
	}
	if m.mux != nil {
		if cerr := m.mux.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("session: close UDP mux: %w", cerr)
		}
	}
	return err
}
