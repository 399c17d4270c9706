// Package turn is the router's optional built-in TURN server (RFC 5766, UDP
// only, on pion/turn), for small deployments and demos behind NAT: a client
// that cannot reach the router's UDP ports directly relays its media through
// it.
//
// Credentials follow the TURN REST API convention (as coturn's
// use-auth-secret): the username is "<expiry-unix>:<user>" and the password
// is base64(HMAC-SHA1(secret, username)), so the router hands out fresh
// credentials (ICEServers, the GET /ice-servers handler) without storing
// them, and a credential stops working at its expiry.
//
// The server is bounded: allocations per user and in total, relay ports in
// a range, and a relay never sends to a forbidden network (the router's
// ICE forbidden networks: link-local and the cloud metadata service,
// loopback unless ICE uses it, ICE_FORBIDDEN_NETWORKS, ...). A
// CreatePermission or ChannelBind naming such a peer is refused, and the
// relay sockets refuse to send there too. What it does is counted
// (Collectors).
package turn

import (
	"crypto/hmac"
	"crypto/md5" //nolint:gosec // RFC 5389 long-term credentials are MD5 by definition
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun"
	pionturn "github.com/pion/turn/v2"
	"github.com/pion/webrtc/v3"
)

// Defaults of Config.
const (
	DefaultRealm                 = "beep"
	DefaultTTL                   = 24 * time.Hour
	DefaultMinPort               = 49152
	DefaultMaxPort               = 65535
	DefaultMaxAllocationsPerUser = 8
	DefaultMaxAllocations        = 1000
)

// Config configures a Server.
type Config struct {
	// Listen is the UDP address TURN clients send to, e.g. ":3478".
	Listen string
	// Realm is the long-term credential realm; "" means DefaultRealm.
	Realm string
	// Secret derives every credential. Required; never logged.
	Secret string
	// TTL is how long an issued credential works; 0 means DefaultTTL.
	TTL time.Duration
	// PublicIP is the relay address announced to clients and the host of
	// the TURN URLs. Nil: Listen's IP, which must then be a specific one.
	PublicIP net.IP
	// MinPort and MaxPort bound the relay ports (inclusive); 0 means
	// DefaultMinPort and DefaultMaxPort.
	MinPort, MaxPort int
	// MaxAllocationsPerUser and MaxAllocations bound live allocations; 0
	// means the defaults, a negative value no bound.
	MaxAllocationsPerUser, MaxAllocations int
	// Forbidden are the networks a relay may never send to (see
	// rtc.DefaultForbiddenNetworks).
	Forbidden []netip.Prefix
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
}

// Server is a running TURN server.
type Server struct {
	log       *slog.Logger
	realm     string
	secret    []byte
	ttl       time.Duration
	publicIP  net.IP
	addr      *net.UDPAddr
	forbidden []netip.Prefix
	perUser   int
	total     int
	srv       *pionturn.Server
	gate      *gateConn
	stats     stats

	changed chan struct{} // cap 1: the live count changed (tests wait on it)

	mu     sync.Mutex
	live   int
	byUser map[string]int
}

// stats are the server's counts.
type stats struct {
	allocations                          atomic.Uint64
	refusedAuth, refusedExpired          atomic.Uint64
	refusedQuotaUser, refusedQuotaTotal  atomic.Uint64
	refusedForbidden, refusedForbiddenTx atomic.Uint64
	bytesIn, bytesOut                    atomic.Uint64 // relay sockets: from peers, to peers
}

// New validates cfg, listens on cfg.Listen and starts serving.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Realm == "" {
		cfg.Realm = DefaultRealm
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.MinPort == 0 {
		cfg.MinPort = DefaultMinPort
	}
	if cfg.MaxPort == 0 {
		cfg.MaxPort = DefaultMaxPort
	}
	if cfg.MaxAllocationsPerUser == 0 {
		cfg.MaxAllocationsPerUser = DefaultMaxAllocationsPerUser
	}
	if cfg.MaxAllocations == 0 {
		cfg.MaxAllocations = DefaultMaxAllocations
	}
	switch {
	case cfg.Secret == "":
		return nil, errors.New("turn: a secret is required")
	case cfg.TTL < 0:
		return nil, errors.New("turn: the credential TTL must be positive")
	case cfg.MinPort < 1 || cfg.MaxPort > 65535 || cfg.MinPort > cfg.MaxPort:
		return nil, fmt.Errorf("turn: relay ports %d-%d: want 1 <= min <= max <= 65535", cfg.MinPort, cfg.MaxPort)
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("turn: listen address %q: %w", cfg.Listen, err)
	}
	bindIP := net.ParseIP(host)
	if host != "" && bindIP == nil {
		return nil, fmt.Errorf("turn: listen address %q: want an IP address, not a name", cfg.Listen)
	}
	public := cfg.PublicIP
	if public == nil {
		if bindIP == nil || bindIP.IsUnspecified() {
			return nil, fmt.Errorf("turn: listen address %q has no specific IP: the relay address to announce must be given", cfg.Listen)
		}
		public = bindIP
	}
	if public.To4() == nil {
		return nil, fmt.Errorf("turn: relay address %s: pion/turn relays over IPv4 only", public)
	}
	relayBind := "0.0.0.0"
	if bindIP != nil && !bindIP.IsUnspecified() {
		relayBind = bindIP.String()
	}

	pc, err := net.ListenPacket("udp4", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("turn: listen %s: %w", cfg.Listen, err)
	}
	s := &Server{
		log:       cfg.Logger.With("component", "turn"),
		realm:     cfg.Realm,
		secret:    []byte(cfg.Secret),
		ttl:       cfg.TTL,
		publicIP:  public,
		addr:      pc.LocalAddr().(*net.UDPAddr),
		forbidden: cfg.Forbidden,
		perUser:   cfg.MaxAllocationsPerUser,
		total:     cfg.MaxAllocations,
		byUser:    make(map[string]int),
		changed:   make(chan struct{}, 1),
	}
	s.gate = &gateConn{PacketConn: pc}
	relays := &relayGenerator{s: s, inner: &pionturn.RelayAddressGeneratorPortRange{
		RelayAddress: public,
		Address:      relayBind,
		MinPort:      uint16(cfg.MinPort),
		MaxPort:      uint16(cfg.MaxPort),
	}}
	s.srv, err = pionturn.NewServer(pionturn.ServerConfig{
		Realm:         cfg.Realm,
		AuthHandler:   s.authenticate,
		LoggerFactory: loggerFactory{s.log},
		PacketConnConfigs: []pionturn.PacketConnConfig{{
			PacketConn:            s.gate,
			RelayAddressGenerator: relays,
			PermissionHandler:     s.permit,
		}},
	})
	if err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("turn: %w", err)
	}
	s.log.Info("TURN server listening", "addr", s.addr.String(), "relay_ip", public.String(),
		"relay_ports", fmt.Sprintf("%d-%d", cfg.MinPort, cfg.MaxPort), "realm", cfg.Realm)
	return s, nil
}

// Addr returns the UDP address the server listens on.
func (s *Server) Addr() *net.UDPAddr { return s.addr }

// URLs returns the server's TURN URLs, as given to clients.
func (s *Server) URLs() []string {
	hp := net.JoinHostPort(s.publicIP.String(), strconv.Itoa(s.addr.Port))
	return []string{"turn:" + hp + "?transport=udp"}
}

// Credentials returns a fresh credential for user, valid for the TTL.
func (s *Server) Credentials(user string) (username, password string, expires time.Time) {
	expires = time.Now().Add(s.ttl).Truncate(time.Second)
	username, password = Credentials(string(s.secret), user, expires)
	return username, password, expires
}

// ICEServer returns the RTCIceServer a client of user should use.
func (s *Server) ICEServer(user string) webrtc.ICEServer {
	username, password, _ := s.Credentials(user)
	return webrtc.ICEServer{URLs: s.URLs(), Username: username, Credential: password, CredentialType: webrtc.ICECredentialTypePassword}
}

// Allocations returns the number of live allocations.
func (s *Server) Allocations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live
}

// Close stops the server and releases every allocation.
func (s *Server) Close() error {
	if err := s.srv.Close(); err != nil {
		return fmt.Errorf("turn: close: %w", err)
	}
	return nil
}

// Credentials derives the TURN REST API credential of user expiring at
// expires with secret: username "<expiry-unix>:<user>", password
// base64(HMAC-SHA1(secret, username)).
func Credentials(secret, user string, expires time.Time) (username, password string) {
	username = strconv.FormatInt(expires.Unix(), 10) + ":" + user
	return username, password64(secret, username)
}

func password64(secret, username string) string {
	mac := hmac.New(sha1.New, []byte(secret))
	mac.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// parseUsername splits a REST API username into its expiry and user.
func parseUsername(username string) (expires time.Time, user string, ok bool) {
	ts, user, found := strings.Cut(username, ":")
	if !found || user == "" {
		return time.Time{}, "", false
	}
	n, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, "", false
	}
	return time.Unix(n, 0), user, true
}

// authenticate is pion's AuthHandler: the long-term key of a well-formed,
// unexpired username. pion then checks the request's MESSAGE-INTEGRITY with
// it, which a wrong password fails.
func (s *Server) authenticate(username, _ string, src net.Addr) ([]byte, bool) {
	expires, _, ok := parseUsername(username)
	if !ok {
		s.stats.refusedAuth.Add(1)
		s.log.Debug("TURN request refused: malformed username", "client", src.String())
		return nil, false
	}
	if time.Now().After(expires) {
		s.stats.refusedExpired.Add(1)
		s.log.Debug("TURN request refused: expired credential", "client", src.String(), "expired", expires)
		return nil, false
	}
	key := md5.Sum([]byte(username + ":" + s.realm + ":" + password64(string(s.secret), username))) //nolint:gosec // RFC 5389
	return key[:], true
}

// forbiddenAddr reports whether ip is in a forbidden network.
func (s *Server) forbiddenAddr(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return true
	}
	a = a.Unmap()
	for _, p := range s.forbidden {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// permit is pion's PermissionHandler (CreatePermission, ChannelBind).
func (s *Server) permit(client net.Addr, peer net.IP) bool {
	if s.forbiddenAddr(peer) {
		s.stats.refusedForbidden.Add(1)
		s.log.Debug("TURN permission refused: forbidden peer network", "client", client.String(), "peer", peer.String())
		return false
	}
	return true
}

// errQuota refuses an allocation over a bound.
var errQuota = errors.New("turn: allocation quota reached")

// reserve counts a new allocation of user, within the bounds.
func (s *Server) reserve(user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.total > 0 && s.live >= s.total:
		s.stats.refusedQuotaTotal.Add(1)
		return fmt.Errorf("%w: %d allocations in total", errQuota, s.live)
	case s.perUser > 0 && s.byUser[user] >= s.perUser:
		s.stats.refusedQuotaUser.Add(1)
		return fmt.Errorf("%w: %d allocations of this user", errQuota, s.byUser[user])
	}
	s.live++
	s.byUser[user]++
	s.stats.allocations.Add(1)
	s.notify()
	return nil
}

// notify says that the live count changed.
func (s *Server) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// release uncounts an allocation of user.
func (s *Server) release(user string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live--
	if s.byUser[user]--; s.byUser[user] <= 0 {
		delete(s.byUser, user)
	}
	s.notify()
}

// gateConn is the server's listening socket. pion/turn reads it on one
// goroutine and handles each datagram before reading the next, so an
// allocation (relayGenerator.AllocatePacketConn) is made while handling the
// datagram read last: gateConn notes the user of each Allocate request it
// reads, for the per-user bound. TestAllocationQuotas fails if pion ever
// stops working this way.
type gateConn struct {
	net.PacketConn
	mu   sync.Mutex
	user string // user of the Allocate request being handled; "" otherwise
}

// ReadFrom reads a datagram and notes whose Allocate request it is.
func (g *gateConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := g.PacketConn.ReadFrom(p)
	user := ""
	// An Allocate request: STUN type 0x0003 in the first two bytes.
	if err == nil && n >= 20 && p[0] == 0x00 && p[1] == 0x03 && stun.IsMessage(p[:n]) {
		m := &stun.Message{Raw: append([]byte(nil), p[:n]...)}
		if m.Decode() == nil {
			var u stun.Username
			if u.GetFrom(m) == nil {
				if _, name, ok := parseUsername(u.String()); ok {
					user = name
				}
			}
		}
	}
	g.mu.Lock()
	g.user = user
	g.mu.Unlock()
	return n, addr, err
}

func (g *gateConn) current() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.user
}

// relayGenerator makes relay sockets within the bounds.
type relayGenerator struct {
	s     *Server
	inner *pionturn.RelayAddressGeneratorPortRange
}

// Validate validates the port range generator.
func (r *relayGenerator) Validate() error { return r.inner.Validate() }

// AllocatePacketConn opens a relay socket for the Allocate request being
// handled, unless its user or the server is at its bound.
func (r *relayGenerator) AllocatePacketConn(network string, requestedPort int) (net.PacketConn, net.Addr, error) {
	user := r.s.gate.current()
	if user == "" {
		return nil, nil, errors.New("turn: allocation without an authenticated user")
	}
	if err := r.s.reserve(user); err != nil {
		r.s.log.Info("TURN allocation refused", "user", user, "err", err)
		return nil, nil, err
	}
	conn, addr, err := r.inner.AllocatePacketConn(network, requestedPort)
	if err != nil {
		r.s.release(user)
		return nil, nil, fmt.Errorf("turn: relay socket: %w", err)
	}
	return &relayConn{PacketConn: conn, s: r.s, user: user}, addr, nil
}

// AllocateConn refuses TCP relays.
func (r *relayGenerator) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errors.New("turn: TCP relays are not offered")
}

// relayConn is one allocation's relay socket: it refuses forbidden
// destinations, counts bytes and releases the allocation's count on Close.
type relayConn struct {
	net.PacketConn
	s    *Server
	user string
	once sync.Once
}

// errForbiddenPeer refuses a datagram to a forbidden network.
var errForbiddenPeer = errors.New("turn: peer is in a forbidden network")

// WriteTo sends to a peer outside the forbidden networks.
func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); !ok || c.s.forbiddenAddr(ua.IP) {
		c.s.stats.refusedForbiddenTx.Add(1)
		return 0, errForbiddenPeer
	}
	n, err := c.PacketConn.WriteTo(p, addr)
	c.s.stats.bytesOut.Add(uint64(n))
	return n, err
}

// ReadFrom reads from a peer.
func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(p)
	c.s.stats.bytesIn.Add(uint64(n))
	return n, addr, err
}

// Close closes the socket and uncounts the allocation once.
func (c *relayConn) Close() error {
	c.once.Do(func() { c.s.release(c.user) })
	return c.PacketConn.Close()
}
