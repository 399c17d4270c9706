package rtc

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"sync"
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
// A down-track instead keeps its own SRTP context, made from the peer's
// DTLS-SRTP keys, encrypts into a buffer it reuses and sends on the UDP
// socket of the peer's selected ICE candidate pair. pion keeps doing
// everything else (ICE, DTLS, RTCP, the receive side). Nothing in pion's
// API hands out the DTLS connection's keys, so egressKeys reads the
// DTLSTransport's connection by reflection; if that ever fails (another
// pion version), the down-track keeps writing through pion, logged once.
//
// A down-track's SSRC is encrypted by one context only: the down-track's, once it has
// one. Packets that went through pion before it carry lower sequence
// numbers, so no (SSRC, index) pair, that is no AES-GCM nonce, is used
// twice. Sender reports (see report.go) and NACK retransmissions (see
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
	conn *net.UDPConn
	to   netip.AddrPort
	// batch and addr, for a socket shared by all peers (the UDP_PORT
	// mux): down-tracks queue their packets for one sendmmsg (batch.go).
	batch batchWriter
	addr  *net.UDPAddr
}

// errNoDirectEgress explains why a peer's down-tracks write through pion.
var errNoDirectEgress = errors.New("direct egress unavailable")

// egressKeys returns the profile and the sending master key and salt of
// pc's DTLS-SRTP session. pc must be connected.
func egressKeys(pc *webrtc.PeerConnection) (*srtpKeys, error) {
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
	return &srtpKeys{key: cfg.Keys.LocalMasterKey, salt: cfg.Keys.LocalMasterSalt, profile: profile}, nil
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

	mu     sync.Mutex
	byAddr map[netip.AddrPort]*trackedConn
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

// trackedConn is a socket that leaves the registry when closed, with the
// arrival times of the RTP it reads, if the system gives them.
type trackedConn struct {
	*net.UDPConn
	socks   *sockets
	addr    netip.AddrPort
	stamped *stamp.Conn // nil without kernel timestamps
	once    sync.Once
}

// ReadFrom reads one datagram, noting when it arrived.
func (c *trackedConn) ReadFrom(b []byte) (int, net.Addr, error) {
	if c.stamped != nil {
		return c.stamped.ReadFrom(b)
	}
	return c.UDPConn.ReadFrom(b)
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
		keys *srtpKeys
		err  error
	)
	if !p.e.cfg.PionEgress {
		keys, err = egressKeys(p.pc)
	}
	p.egressMu.Lock()
	defer p.egressMu.Unlock()
	if err != nil {
		p.egressErr(err)
	}
	p.keys = keys
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
	e := egress{srtpKeys: *p.keys, conn: tc.UDPConn, to: to}
	if p.e.mux != nil {
		if to.Addr().Is4() {
			e.batch = ipv4.NewPacketConn(tc.UDPConn)
		} else {
			e.batch = ipv6.NewPacketConn(tc.UDPConn)
		}
		e.addr = net.UDPAddrFromAddrPort(to)
	}
	p.egress.Store(&e)
}

// egressErr logs, once per peer, why its down-tracks cannot use the direct path.
// Callers hold p.egressMu.
func (p *Peer) egressErr(err error) {
	if !p.egressLogged {
		p.egressLogged = true
		p.log.Info("down-tracks write through pion", "reason", err)
	}
}
