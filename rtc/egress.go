package rtc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/pion/dtls/v2"
	"github.com/pion/srtp/v3"
	"github.com/pion/transport/v2"
	"github.com/pion/transport/v2/stdnet"
	"github.com/pion/webrtc/v3"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/beepvoice/router/internal/stamp"
)

// The direct egress path.
//
// pion writes every RTP packet through a generic stack: the interceptor
// chain (the sender report interceptor takes a lock and reads the clock),
// srtpWriterFuture, SessionSRTP (a lock and a map lookup for the SSRC
// state), the DTLS/SRTP mux, ice.Conn (a channel check and a clock read),
// the candidate pair and finally sendto. Profiled at 10 publishers × 100
// subscribers, that stack cost about 4.9 µs per egress packet besides the
// system call, mostly cache misses across a dozen objects per write.
//
// A down-track instead encrypts with the peer's DTLS-SRTP keys itself, into
// a buffer it reuses, and sends on the UDP socket of the peer's selected
// ICE candidate pair. With AES-GCM (either key size) all of a peer's
// down-tracks share one sealer (sealer.go), with AES_CM_128_HMAC_SHA1_80
// (what browsers negotiate) one AES-CM sealer (cmsealer.go); with another
// profile each keeps a pion SRTP context of its own. pion keeps doing everything else
// (ICE, DTLS, RTCP, a stream's first packets; see ingress.go). Nothing in pion's
// API hands out the DTLS connection's keys, so ExportSRTPKeys reads the
// DTLSTransport's connection by reflection; if that ever fails (another
// pion version), the down-track keeps writing through pion, logged once.
//
// A down-track's SSRC is encrypted by the down-track only, once it has
// encrypted a packet itself. Packets that went through pion before carry
// lower sequence numbers, so no (SSRC, index) pair, that is no AES-GCM
// nonce, is used twice: the sealer's index counts the wraps from the
// down-track's first packet, whichever path it took, as pion's context
// and the receiver do. Sender reports (see report.go) and NACK retransmissions (see
// DownTrack.resend) come from the down-track, since pion no longer sees its packets.

// srtpKeys are the sending side's keys of a peer's DTLS-SRTP session.
type srtpKeys struct {
	key, salt []byte
	profile   srtp.ProtectionProfile
}

// egress is where a peer's down-tracks send: the keys of its DTLS-SRTP session
// and the route of its selected ICE candidate pair.
type egress struct {
	srtpKeys
	// sealer and cm are the peer's one AES-GCM or AES-CM sealer, the
	// same in every route of the peer; both nil for another SRTP profile.
	sealer *gcmSealer
	cm     *cmSealer
	conn   *net.UDPConn
	to     netip.AddrPort
	// batch and addr, for a socket shared by all peers (the UDP_PORT
	// mux): down-tracks queue their packets for one sendmmsg (batch.go).
	// batch is the socket's own writer, the same for every peer on it.
	batch batchWriter
	addr  *net.UDPAddr
}

// errNoDirectEgress explains why a peer's down-tracks write through pion.
var errNoDirectEgress = errors.New("direct egress unavailable")

// SRTPKeys are both directions' master keys and salts of a DTLS-SRTP
// session, with its protection profile.
type SRTPKeys struct {
	Profile               srtp.ProtectionProfile
	LocalKey, LocalSalt   []byte // what this side encrypts with
	RemoteKey, RemoteSalt []byte // what the other side encrypts with
}

// ExportSRTPKeys returns the keys of pc's DTLS-SRTP session, which must be
// connected. pion does not hand them out: they are read from its DTLS
// transport by reflection (see dtlsConn), and an error says when this
// pion's transport does not have them where expected. The direct egress
// path uses the local keys; the load tool's floor (cmd/loadtest) both.
func ExportSRTPKeys(pc *webrtc.PeerConnection) (*SRTPKeys, error) {
	conn, err := dtlsConn(pc.SCTP().Transport())
	if err != nil {
		return nil, err
	}
	var profile srtp.ProtectionProfile
	p, ok := conn.SelectedSRTPProtectionProfile()
	if !ok {
		return nil, fmt.Errorf("%w: no SRTP protection profile", errNoDirectEgress)
	}
	switch p {
	case dtls.SRTP_AEAD_AES_128_GCM:
		profile = srtp.ProtectionProfileAeadAes128Gcm
	case dtls.SRTP_AEAD_AES_256_GCM:
		profile = srtp.ProtectionProfileAeadAes256Gcm
	case dtls.SRTP_AES128_CM_HMAC_SHA1_80:
		profile = srtp.ProtectionProfileAes128CmHmacSha1_80
	default:
		return nil, fmt.Errorf("%w: SRTP protection profile %#x", errNoDirectEgress, p)
	}
	client, err := dtlsClient(pc)
	if err != nil {
		return nil, err
	}
	state := conn.ConnectionState()
	cfg := srtp.Config{Profile: profile}
	if err := cfg.ExtractSessionKeysFromDTLS(&state, client); err != nil {
		return nil, fmt.Errorf("%w: extract SRTP keys: %v", errNoDirectEgress, err)
	}
	return &SRTPKeys{
		Profile:  profile,
		LocalKey: cfg.Keys.LocalMasterKey, LocalSalt: cfg.Keys.LocalMasterSalt,
		RemoteKey: cfg.Keys.RemoteMasterKey, RemoteSalt: cfg.Keys.RemoteMasterSalt,
	}, nil
}

var dtlsConnType = reflect.TypeOf((*dtls.Conn)(nil))

// dtlsConn returns the DTLS connection of t. pion v3 keeps it unexported.
// The field's name and type are checked, so a pion that changes them
// yields an error, never a wrong pointer. pion sets the field before it
// reports the transport connected, and never changes it after.
func dtlsConn(t *webrtc.DTLSTransport) (*dtls.Conn, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: no DTLS transport", errNoDirectEgress)
	}
	f := reflect.ValueOf(t).Elem().FieldByName("conn")
	if !f.IsValid() || f.Type() != dtlsConnType {
		return nil, fmt.Errorf("%w: this pion's DTLSTransport has no conn *dtls.Conn", errNoDirectEgress)
	}
	c := (*dtls.Conn)(unsafe.Pointer(f.Pointer()))
	if c == nil {
		return nil, fmt.Errorf("%w: DTLS not connected", errNoDirectEgress)
	}
	return c, nil
}

// dtlsClient reports whether the router is the DTLS client of pc, from
// the setup attributes (RFC 5763: active is the client): its own answer's,
// or, when it made the offer (actpass), the remote answer's.
func dtlsClient(pc *webrtc.PeerConnection) (bool, error) {
	d := pc.CurrentLocalDescription()
	if d == nil {
		return false, fmt.Errorf("%w: no local description", errNoDirectEgress)
	}
	if active, ok := setupRole(d.SDP); ok {
		return active, nil
	}
	if r := pc.CurrentRemoteDescription(); r != nil && d.Type == webrtc.SDPTypeOffer {
		if remoteActive, ok := setupRole(r.SDP); ok {
			return !remoteActive, nil
		}
	}
	return false, fmt.Errorf("%w: no single DTLS role in the descriptions", errNoDirectEgress)
}

// setupRole reports whether an SDP's setup attributes say active (true) or
// passive (false); ok is false for actpass, none, or both.
func setupRole(sdp string) (active, ok bool) {
	a := strings.Contains(sdp, "a=setup:active")
	p := strings.Contains(sdp, "a=setup:passive")
	return a, a != p
}

// route returns the socket and remote address of a selected candidate
// pair, if the local candidate is one of the host sockets in socks.
func route(pair *webrtc.ICECandidatePair, socks *sockets) (*trackedConn, netip.AddrPort, error) {
	if pair == nil || pair.Local == nil || pair.Remote == nil {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: no selected candidate pair", errNoDirectEgress)
	}
	if pair.Local.Protocol != webrtc.ICEProtocolUDP || pair.Local.Typ != webrtc.ICECandidateTypeHost {
		return nil, netip.AddrPort{}, fmt.Errorf("%w: local candidate is %s %s", errNoDirectEgress, pair.Local.Protocol, pair.Local.Typ)
	}
	local, err := candidateAddr(pair.Local)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	remote, err := candidateAddr(pair.Remote)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	conn := socks.lookup(local)
	if conn == nil {
		// A NAT 1:1 address (PUBLIC_IPS) names no local socket.
		return nil, netip.AddrPort{}, fmt.Errorf("%w: no socket bound to %s", errNoDirectEgress, local)
	}
	return conn, remote, nil
}

func candidateAddr(c *webrtc.ICECandidate) (netip.AddrPort, error) {
	a, err := netip.ParseAddr(c.Address)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%w: candidate address %q: %v", errNoDirectEgress, c.Address, err)
	}
	return netip.AddrPortFrom(a.Unmap(), c.Port), nil
}

// sockets is the transport.Net given to pion's ICE. It records the UDP
// sockets ICE opens (per peer, or the UDP_PORT mux's) by local address, so
// that down-tracks can send on the socket of their peer's selected pair. It also
// lists the network interfaces for each gathering, as pion does when it
// makes its own Net, without keeping the list per peer.
type sockets struct {
	transport.Net

	// forbidden are the networks no socket sends to (see trackedConn);
	// set once, before the first socket opens.
	forbidden forbiddenNets
	// refused counts what the Engine refused its clients. It lives here,
	// the one object of the Engine every peer and socket reaches.
	refused refusals
	// budget judges whether a new peer's sockets fit (sockbudget.go).
	budget socketBudget

	mu     sync.Mutex
	byAddr map[netip.AddrPort]*trackedConn
}

// refusals are the Engine's cumulative counts of refusals (see Refusals).
type refusals struct {
	candidates, sends, tracks, streams atomic.Uint64
}

// DefaultForbiddenNetworks returns the networks remote ICE candidates may
// not name, for a router that gathers on iceIPs: unspecified, link-local
// (with the cloud metadata service, 169.254.169.254 and AWS's
// fd00:ec2::254), multicast and broadcast, the documentation ranges, and
// loopback unless iceIPs has a loopback address. Private ranges (10/8,
// 172.16/12, 192.168/16, fc00::/7) are not in it: a deployment that does
// not serve clients there adds them (ICE_FORBIDDEN_NETWORKS).
func DefaultForbiddenNetworks(iceIPs []net.IP) []netip.Prefix {
	nets := []string{
		"0.0.0.0/8", "::/128", // unspecified ("this network")
		"169.254.0.0/16", "fe80::/10", // link-local, with 169.254.169.254
		"fd00:ec2::254/128",       // AWS's IPv6 metadata service
		"224.0.0.0/4", "ff00::/8", // multicast
		"255.255.255.255/32",                                                 // broadcast
		"192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", // documentation
	}
	if !hasLoopback(iceIPs) {
		nets = append(nets, "127.0.0.0/8", "::1/128")
	}
	out := make([]netip.Prefix, len(nets))
	for i, n := range nets {
		out[i] = netip.MustParsePrefix(n)
	}
	return out
}

// forbiddenNets are networks as masks and values, IPv4 and IPv6 apart: a
// scan of a few of them costs a nanosecond or two each, on pion's write
// path (every datagram it sends).
type forbiddenNets struct {
	v4 []net4
	v6 []net6
}

type net4 struct{ mask, value uint32 }

type net6 struct{ mask, value [2]uint64 }

// newForbiddenNets compiles prefixes; an IPv4-mapped IPv6 prefix is taken
// for its IPv4 network (addresses are unmapped before the check).
func newForbiddenNets(prefixes []netip.Prefix) forbiddenNets {
	var f forbiddenNets
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		a, bits := p.Addr(), p.Bits()
		if a.Is4In6() {
			a, bits = a.Unmap(), max(bits-96, 0)
		}
		if a.Is4() {
			mask := ^uint32(0) << (32 - bits)
			if bits == 0 {
				mask = 0
			}
			f.v4 = append(f.v4, net4{mask: mask, value: u32(a) & mask})
			continue
		}
		var n net6
		for i := range 2 {
			b := min(max(bits-64*i, 0), 64)
			if b > 0 {
				n.mask[i] = ^uint64(0) << (64 - b)
			}
		}
		v := u128(a)
		n.value = [2]uint64{v[0] & n.mask[0], v[1] & n.mask[1]}
		f.v6 = append(f.v6, n)
	}
	return f
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func u128(a netip.Addr) [2]uint64 {
	b := a.As16()
	return [2]uint64{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

// contains reports whether a, IPv4-mapped or zoned or not, is in one of
// the networks.
func (f forbiddenNets) contains(a netip.Addr) bool {
	a = a.Unmap()
	if a.Is4() {
		x := u32(a)
		for _, n := range f.v4 {
			if x&n.mask == n.value {
				return true
			}
		}
		return false
	}
	if !a.IsValid() {
		return false
	}
	x := u128(a)
	for _, n := range f.v6 {
		if x[0]&n.mask[0] == n.value[0] && x[1]&n.mask[1] == n.value[1] {
			return true
		}
	}
	return false
}

// containsIP is contains for a net.IP; an empty IP, which the kernel
// takes for the unspecified address, is checked as 0.0.0.0.
func (f forbiddenNets) containsIP(ip net.IP) bool {
	if v4 := ip.To4(); v4 != nil {
		x := binary.BigEndian.Uint32(v4)
		for _, n := range f.v4 {
			if x&n.mask == n.value {
				return true
			}
		}
		return false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		a = netip.IPv4Unspecified()
	}
	return f.contains(a)
}

func newSockets() (*sockets, error) {
	n, err := stdnet.NewNet()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	return &sockets{Net: n, byAddr: make(map[netip.AddrPort]*trackedConn)}, nil
}

// Interfaces lists the interfaces now: a router's addresses can change
// while it runs.
func (s *sockets) Interfaces() ([]*transport.Interface, error) {
	n, err := stdnet.NewNet()
	if err != nil {
		return nil, fmt.Errorf("list network interfaces: %w", err)
	}
	return n.Interfaces()
}

// ListenUDP opens a UDP socket and records it until it is closed. The
// socket notes the kernel's arrival time of the RTP it receives (see
// internal/stamp), where the system can.
func (s *sockets) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := s.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		return c, nil
	}
	addr := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	tc := &trackedConn{UDPConn: uc, socks: s, addr: addr}
	if tc.stamped, err = stamp.Wrap(uc, &stamp.Table{}); err != nil {
		tc.stamped = nil // latencies then count from the track's read
	}
	s.mu.Lock()
	s.byAddr[addr] = tc
	s.mu.Unlock()
	return tc, nil
}

func (s *sockets) lookup(addr netip.AddrPort) *trackedConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byAddr[addr]
}

// peerNet is the transport.Net of one peer's ICE agent: the sockets, which
// it also remembers, so that the peer's Close releases every one of them,
// and refuses to open more once closed.
type peerNet struct {
	*sockets

	mu     sync.Mutex
	conns  []*trackedConn
	closed bool
}

// errPeerClosed refuses a socket to the ICE agent of a closed peer.
var errPeerClosed = errors.New("rtc: peer closed")

// ListenUDP opens a socket for the peer's ICE agent (see sockets).
func (n *peerNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, errPeerClosed
	}
	c, err := n.sockets.ListenUDP(network, laddr)
	if tc, ok := c.(*trackedConn); ok && err == nil {
		n.conns = append(n.conns, tc)
		n.sockets.budget.opened(len(n.conns))
	}
	return c, err
}

// closeAll closes the sockets the agent opened and did not close itself,
// and every one it asks for from now on. It returns how many it closed.
func (n *peerNet) closeAll() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	open := 0
	for _, c := range n.conns {
		if c.Close() == nil {
			open++
		}
	}
	n.conns = nil
	return open
}

// trackedConn is a socket that leaves the registry when closed, with the
// arrival times of the RTP it reads, if the system gives them.
type trackedConn struct {
	*net.UDPConn
	socks   *sockets
	addr    netip.AddrPort
	stamped *stamp.Conn // nil without kernel timestamps
	once    sync.Once

	// batch4 and batch6 are the socket's one batch writer per address
	// family, made on first use (see batchWriter).
	batchOnce      sync.Once
	batch4, batch6 batchWriter

	// routes are the peers whose packets the socket's reader takes on the
	// direct ingress path (ingress.go).
	routes routes
	// last is the sender of the last datagram ReadFrom returned, as pion
	// takes it; only ReadFrom uses it.
	last stamp.AddrCache
}

// batchWriter returns the socket's batch writer (sendmmsg) for
// destinations of to's address family. There is one per socket, shared by
// every peer whose route uses the socket: a SendBuffer flushes when the
// writer changes, so a writer per peer would send each copy of a fan-out
// with a system call of its own.
func (c *trackedConn) batchWriter(to netip.AddrPort) batchWriter {
	c.batchOnce.Do(func() {
		c.batch4 = ipv4.NewPacketConn(c.UDPConn)
		c.batch6 = ipv6.NewPacketConn(c.UDPConn)
	})
	if to.Addr().Unmap().Is4() {
		return c.batch4
	}
	return c.batch6
}

// ReadFrom reads one datagram for pion, noting when it arrived. The
// media of a peer with a direct ingress path it hands over itself, and
// reads on. It is called by one goroutine at a time (the UDP mux's, or
// the ICE candidate's reader), and allocates nothing while the datagrams
// it returns come from one address.
func (c *trackedConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		var (
			n   int
			ap  netip.AddrPort
			err error
		)
		if c.stamped != nil {
			n, ap, err = c.stamped.ReadFromAddrPort(b)
		} else {
			n, ap, err = c.UDPConn.ReadFromUDPAddrPort(b)
		}
		if err != nil {
			return n, nil, err
		}
		if in := c.routes.lookup(ap); in != nil && in.receive(b[:n]) {
			continue
		}
		return n, c.last.Addr(ap), nil
	}
}

// errForbiddenDestination refuses a datagram to a forbidden network.
var errForbiddenDestination = errors.New("rtc: destination is in a forbidden network")

// The write methods refuse a destination in a forbidden network, before
// any system call, and count the refusal. pion's ICE sends every
// connectivity check, STUN and TURN message, DTLS record and, with
// EGRESS=pion, every media packet through WriteTo (directly, or through
// its UDP mux); so not even a peer-reflexive candidate, learned from the
// source of an incoming request, makes the router send there. The direct
// egress path sends on the embedded *net.UDPConn, to its selected pair's
// remote address, which got there through these checks.

// WriteTo sends b to addr unless addr is forbidden.
func (c *trackedConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if a, ok := addr.(*net.UDPAddr); ok && a != nil && c.socks.forbidden.containsIP(a.IP) {
		return c.refuse()
	}
	return c.UDPConn.WriteTo(b, addr)
}

// WriteToUDP sends b to addr unless addr is forbidden.
func (c *trackedConn) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	if addr != nil && c.socks.forbidden.containsIP(addr.IP) {
		return c.refuse()
	}
	return c.UDPConn.WriteToUDP(b, addr)
}

// WriteToUDPAddrPort sends b to addr unless addr is forbidden.
func (c *trackedConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	if c.socks.forbidden.contains(addr.Addr()) {
		return c.refuse()
	}
	return c.UDPConn.WriteToUDPAddrPort(b, addr)
}

// WriteMsgUDP sends b and oob to addr unless addr is forbidden.
func (c *trackedConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (n, oobn int, err error) {
	if addr != nil && c.socks.forbidden.containsIP(addr.IP) {
		_, err = c.refuse()
		return 0, 0, err
	}
	return c.UDPConn.WriteMsgUDP(b, oob, addr)
}

// WriteMsgUDPAddrPort sends b and oob to addr unless addr is forbidden.
func (c *trackedConn) WriteMsgUDPAddrPort(b, oob []byte, addr netip.AddrPort) (n, oobn int, err error) {
	if c.socks.forbidden.contains(addr.Addr()) {
		_, err = c.refuse()
		return 0, 0, err
	}
	return c.UDPConn.WriteMsgUDPAddrPort(b, oob, addr)
}

func (c *trackedConn) refuse() (int, error) {
	c.socks.refused.sends.Add(1)
	return 0, errForbiddenDestination
}

// Close closes the socket and forgets it.
func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.socks.mu.Lock()
		if c.socks.byAddr[c.addr] == c {
			delete(c.socks.byAddr, c.addr)
		}
		c.socks.mu.Unlock()
	})
	if c.stamped != nil {
		return c.stamped.Close()
	}
	return c.UDPConn.Close()
}

// watchRoute follows the peer's selected ICE candidate pair, so that the
// direct path always sends where ICE does, and packets find their arrival
// times. Called once, before connecting.
func (p *Peer) watchRoute() {
	p.pc.SCTP().Transport().ICETransport().OnSelectedCandidatePairChange(func(pair *webrtc.ICECandidatePair) {
		p.egressMu.Lock()
		defer p.egressMu.Unlock()
		p.pair = pair
		p.updateRoute()
	})
}

// startEgress gives the peer's down-tracks the direct path once DTLS is up.
func (p *Peer) startEgress() {
	var (
		keys   *srtpKeys
		sealer *gcmSealer
		cm     *cmSealer
		err    error
	)
	var open *opener
	if !p.e.cfg.PionEgress || !p.e.cfg.PionIngress {
		var all *SRTPKeys
		if all, err = ExportSRTPKeys(p.pc); err == nil {
			if !p.e.cfg.PionEgress {
				keys = &srtpKeys{key: all.LocalKey, salt: all.LocalSalt, profile: all.Profile}
			}
			if !p.e.cfg.PionIngress {
				open = newOpener(srtpKeys{key: all.RemoteKey, salt: all.RemoteSalt, profile: all.Profile})
			}
		}
	}
	if keys != nil {
		var serr error
		if sealer, serr = newGCMSealer(*keys); serr != nil {
			if cm, serr = newCMSealer(*keys); serr != nil {
				p.log.Debug("down-tracks encrypt with an SRTP context each", "reason", serr)
			}
		}
	}
	p.egressMu.Lock()
	defer p.egressMu.Unlock()
	if err != nil {
		p.egressErr(err)
	}
	p.keys, p.sealer, p.cm = keys, sealer, cm
	if open != nil {
		p.in.open.Store(open)
	}
	if p.pair == nil {
		if pair, err := p.pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair(); err == nil {
			p.pair = pair
		}
	}
	p.updateRoute()
}

// updateRoute publishes the arrival times and the direct path of the
// current pair. Callers hold p.egressMu.
func (p *Peer) updateRoute() {
	tc, to, err := route(p.pair, p.e.socks)
	p.setIngressRoute(tc, to)
	if err != nil {
		p.arrivals.Store(nil)
		p.egress.Store(nil)
		if p.keys != nil {
			p.egressErr(err)
		}
		return
	}
	if tc.stamped != nil {
		p.arrivals.Store(tc.stamped.Table())
	} else {
		p.arrivals.Store(nil)
	}
	if p.keys == nil {
		return
	}
	e := egress{srtpKeys: *p.keys, sealer: p.sealer, cm: p.cm, conn: tc.UDPConn, to: to}
	if p.e.mux != nil {
		e.batch = tc.batchWriter(to)
		e.addr = net.UDPAddrFromAddrPort(to)
	}
	p.egress.Store(&e)
}

// setIngressRoute sends the packets tc receives from to, the selected
// pair's, on the peer's direct ingress path, once it has an opener, and
// no longer those of the previous pair. A nil tc drops the route, as does
// a closed peer: a route added after Close dropped it would stay on the
// shared socket. Callers hold p.egressMu.
func (p *Peer) setIngressRoute(tc *trackedConn, to netip.AddrPort) {
	if p.in.open.Load() == nil {
		tc = nil
	}
	select {
	case <-p.done:
		tc = nil
	default:
	}
	if tc == p.inConn && to == p.inTo {
		return
	}
	if p.inConn != nil {
		p.inConn.routes.remove(p.inTo, &p.in)
	}
	p.inConn, p.inTo = tc, to
	if tc != nil {
		tc.routes.set(to, &p.in)
	}
}

// egressDesc says, for the log, how the peer's down-tracks encrypt: the
// negotiated SRTP profile, and whether with the peer's one sealer or a pion
// context each; "pion" when they write through pion.
func (p *Peer) egressDesc() string {
	p.egressMu.Lock()
	defer p.egressMu.Unlock()
	switch {
	case p.keys == nil:
		return "pion"
	case p.sealer != nil || p.cm != nil:
		return p.keys.profile.String() + ", one sealer"
	default:
		return p.keys.profile.String() + ", a context per down-track"
	}
}

// egressErr logs, once per peer, why its down-tracks cannot use the direct path.
// Callers hold p.egressMu.
func (p *Peer) egressErr(err error) {
	if !p.egressLogged {
		p.egressLogged = true
		p.log.Info("down-tracks write through pion", "reason", err)
	}
}
