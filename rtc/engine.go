package rtc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// Config configures an Engine.
type Config struct {
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
	// SharedSocket, with UDPPort zero, carries all ICE traffic on one
	// socket per local address on an ephemeral port (the mux of UDPPort,
	// on a port the system picks), instead of sockets of each peer's own.
	// Several routers then share a host without a socket per peer, and
	// every copy of a fan-out leaves with one sendmmsg (batch.go).
	SharedSocket bool
	// ICEServers are STUN/TURN servers for gathering.
	ICEServers []webrtc.ICEServer
	// ConnectTimeout closes a peer that has not connected by then.
	ConnectTimeout time.Duration
	// DisconnectedTimeout, FailedTimeout and KeepaliveInterval tune ICE;
	// zero keeps pion's defaults (5 s, 25 s, 2 s). Unless PionIngress,
	// the keepalive interval is at most a third of the disconnected timeout (see
	// iceTimeouts).
	DisconnectedTimeout, FailedTimeout, KeepaliveInterval time.Duration
	// MaxDownTracks bounds the receiving m-lines of one offer.
	MaxDownTracks int
	// MaxMediaLines bounds all the m-lines of one offer (audio and video,
	// whatever their direction, data channels included); zero means
	// DefaultMaxMediaLines.
	MaxMediaLines int
	// MaxTracksPerPeer bounds the tracks one peer publishes at a time;
	// further tracks are refused (not read, counted in Refusals); zero
	// means DefaultMaxTracksPerPeer.
	MaxTracksPerPeer int
	// ForbiddenNetworks are the networks remote ICE candidates may never
	// name and the router's ICE sockets never send to, so that a client
	// cannot use the router to probe them. nil means
	// DefaultForbiddenNetworks(ICEIPs); a non-nil list replaces it (append
	// to DefaultForbiddenNetworks to add networks).
	ForbiddenNetworks []netip.Prefix
	// KeyframeInterval is the shortest time between two keyframe requests
	// to one publisher's video track; zero means DefaultKeyframeInterval.
	KeyframeInterval time.Duration
	// TrackBuffer bounds, in bytes, the received audio of one track of a
	// peer without video that waits for its reader; past it packets are
	// dropped and counted (stale audio is worth less than late audio).
	// Zero means DefaultTrackBuffer.
	TrackBuffer int
	// VideoTrackBuffer is the same bound for every track of a peer with
	// video: a keyframe arrives as a burst of packets, and a packet dropped
	// here can never be had again (pion's SRTP has counted it received,
	// and refuses its retransmission as a replay). Zero means
	// DefaultVideoTrackBuffer.
	VideoTrackBuffer int
	// PionEgress sends every down-track's packets through pion's generic
	// write path (interceptors, SRTP session, ICE connection) instead of
	// the direct path of egress.go. It costs more CPU per packet; it is
	// there to compare and as a fallback.
	PionEgress bool
	// PionIngress leaves every received packet to pion's generic read
	// path (ICE, DTLS/SRTP mux, SRTP session) instead of the direct path
	// of ingress.go, which takes a connected peer's media at the socket.
	// It is there to compare and as a fallback.
	PionIngress bool
	// MaxSockets bounds the UDP sockets of the Engine's ICE agents: a new
	// peer whose sockets would pass it is refused with ErrSocketLimit.
	// Zero means no bound.
	MaxSockets int
}

// Defaults for Config fields left zero.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultMaxDownTracks  = 16
	// DefaultMaxMediaLines is far above a Beep device's slots (MAX_SLOTS,
	// 16) plus its sending m-line.
	DefaultMaxMediaLines = 32
	// DefaultMaxTracksPerPeer allows audio and video, with room to spare.
	DefaultMaxTracksPerPeer = 4
)

// Errors of the Engine and its peers.
var (
	// ErrClosed is returned once the Engine is closed.
	ErrClosed = errors.New("media engine closed")
	// ErrBadOffer wraps every reason a client's offer is refused.
	ErrBadOffer = errors.New("bad offer")
)

// Engine owns the pion API, the UDP sockets ICE uses and every Peer.
type Engine struct {
	cfg   Config
	log   *slog.Logger
	apis  *apis
	mux   ice.UDPMux
	socks *sockets

	mu     sync.Mutex
	peers  map[*Peer]struct{}
	closed bool

	// wg counts every goroutine the Engine's peers start.
	wg sync.WaitGroup

	tracks atomic.Int64
	count  counters

	// certs is the DTLS certificate every new peer gets.
	certs certificates

	stop chan struct{}
	done chan struct{}
}

// counters are the Engine's cumulative counts. Track readers add to them in
// batches; down-tracks keep their own and hand them over when their peer
// closes.
type counters struct {
	packetsIn, bytesIn, malformed atomic.Uint64
	duplicates                    atomic.Uint64 // see UpTrack.Cache
	packetsOut, bytesOut          atomic.Uint64 // of closed peers' down-tracks
	nacks, plis                   atomic.Uint64
	resent                        atomic.Uint64
	nacksSent                     atomic.Uint64
	overload                      atomic.Uint64
	keyframeRequests              atomic.Uint64
	twccSent                      atomic.Uint64
	// The direct ingress path's packets (ingress.go): taken, left to pion
	// for not authenticating, and dropped as replays by either path.
	ingressDirect, ingressFallback, ingressReplays atomic.Uint64
	nacksRefused                                   atomic.Uint64 // pion path; and of closed peers' down-tracks
}

// NewEngine returns an Engine. It opens the UDP port, if one is configured.
func NewEngine(cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.MaxDownTracks <= 0 {
		cfg.MaxDownTracks = DefaultMaxDownTracks
	}
	if cfg.MaxMediaLines <= 0 {
		cfg.MaxMediaLines = DefaultMaxMediaLines
	}
	if cfg.MaxTracksPerPeer <= 0 {
		cfg.MaxTracksPerPeer = DefaultMaxTracksPerPeer
	}
	if cfg.ForbiddenNetworks == nil {
		cfg.ForbiddenNetworks = DefaultForbiddenNetworks(cfg.ICEIPs)
	}
	if cfg.TrackBuffer <= 0 {
		cfg.TrackBuffer = DefaultTrackBuffer
	}
	if cfg.VideoTrackBuffer <= 0 {
		cfg.VideoTrackBuffer = DefaultVideoTrackBuffer
	}
	if cfg.KeyframeInterval <= 0 {
		cfg.KeyframeInterval = DefaultKeyframeInterval
	}
	e := &Engine{
		cfg:   cfg,
		log:   cfg.Logger,
		peers: make(map[*Peer]struct{}),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
		certs: certificates{renew: certRenewal, now: time.Now},
	}
	socks, err := newSockets()
	if err != nil {
		return nil, err
	}
	apis, mux, err := newAPIs(&cfg, &e.count, socks)
	if err != nil {
		return nil, err
	}
	e.apis, e.mux, e.socks = apis, mux, socks
	go e.reports()
	return e, nil
}

// reports sends the down-tracks' sender reports once a reportInterval.
func (e *Engine) reports() {
	defer close(e.done)
	tick := time.NewTicker(reportInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.stop:
			return
		case now := <-tick.C:
			for _, p := range e.connectedPeers() {
				p.sendReports(now)
			}
		}
	}
}

// connectedPeers returns the peers that are connected now.
func (e *Engine) connectedPeers() []*Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	peers := make([]*Peer, 0, len(e.peers))
	for p := range e.peers {
		if p.connectedFlag {
			peers = append(peers, p)
		}
	}
	return peers
}

// PeerOptions choose what a peer connection negotiates.
type PeerOptions struct {
	// Video negotiates video (VP8, H264, VP9, AV1) besides Opus audio.
	Video bool
}

// NewPeer creates the peer connection of device c; h is told of its life.
// The peer closes itself if it has not connected within ConnectTimeout.
func (e *Engine) NewPeer(c claim.Claim, h Handler, opts PeerOptions) (*Peer, error) {
	if err := e.admitSockets(); err != nil {
		return nil, err
	}
	cert, err := e.certs.get()
	if err != nil {
		return nil, err
	}
	n := &peerNet{sockets: e.socks}
	g := &streamGuard{limit: streamLimit(e.cfg.MaxMediaLines)}
	pc, err := e.apis.api(opts.Video, n, g).NewPeerConnection(webrtc.Configuration{
		ICEServers:   e.cfg.ICEServers,
		Certificates: []webrtc.Certificate{cert},
	})
	if err != nil {
		return nil, fmt.Errorf("new peer connection: %w", err)
	}
	p := newPeer(e, c, pc, h, opts)
	p.net, p.streams = n, g
	p.in.count, p.in.log = &e.count, p.log
	g.in = &p.in
	// Before any packet: pion's sessions start with the negotiation.
	g.trip = p.tripStreams
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		_ = pc.Close()
		return nil, ErrClosed
	}
	e.peers[p] = struct{}{}
	e.wg.Add(1)
	e.mu.Unlock()
	p.start()
	return p, nil
}

// peerConnected marks p connected; it reports false if p closed meanwhile.
func (e *Engine) peerConnected(p *Peer) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.peers[p]; !ok {
		return false
	}
	p.connectedFlag = true
	return true
}

// peerClosed forgets p and keeps its down-tracks' counts.
func (e *Engine) peerClosed(p *Peer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.peers, p)
	if p.connectedFlag {
		for _, d := range p.downs {
			packets, bytes, refused := d.counts()
			e.count.packetsOut.Add(packets)
			e.count.bytesOut.Add(bytes)
			e.count.nacksRefused.Add(refused)
		}
	}
}

// Stats is a snapshot of the media state and cumulative counts.
type Stats struct {
	// Peers, Tracks and DownTracks are current sizes: peers (connected or
	// not), published tracks, and the down-tracks of connected peers.
	Peers, Tracks, DownTracks int
	// DirectPeers counts the connected peers whose down-tracks send
	// directly (egress.go) rather than through pion's write path.
	DirectPeers int
	// PacketsIn and BytesIn count RTP received from publishers; Malformed
	// the packets that did not parse; Duplicates those dropped because
	// their sequence number had been forwarded already (UpTrack.Cache).
	PacketsIn, BytesIn, Malformed, Duplicates uint64
	// PacketsOut and BytesOut count RTP forwarded to down-tracks.
	PacketsOut, BytesOut uint64
	// NACKs and PLIs count feedback received from subscribers (PLI and
	// FIR both count as PLIs).
	NACKs, PLIs uint64
	// KeyframeRequests counts the PLIs and FIRs the router sent to
	// publishers (at most one per track per keyframe interval).
	KeyframeRequests uint64
	// TWCCSent counts the transport-wide congestion control feedback
	// packets sent to publishers of video, for their encoders to adapt.
	TWCCSent uint64
	// NACKsRefused counts the retransmissions refused to subscribers: a
	// packet asked for again within the dedup window, or past the
	// receiver's budget (nack.go).
	NACKsRefused uint64
	// Refused counts what clients asked for and were refused: ICE
	// candidates, sends to forbidden networks, tracks past the bound.
	Refused Refusals
	// Resent counts the packets the direct egress path sent again in
	// answer to NACKs (pion's responder, with PionEgress, does not count).
	Resent uint64
	// NACKsSent counts NACKs the router sent to publishers for lost packets.
	NACKsSent uint64
	// Overload counts received packets dropped because their track's reader
	// was TrackBuffer behind.
	Overload uint64
	// IngressDirect counts the received RTP packets the direct ingress
	// path took at the socket (ingress.go); IngressFallback those it left
	// to pion because they did not authenticate; IngressReplays those
	// either path dropped as replays or too old.
	IngressDirect, IngressFallback, IngressReplays uint64
}

// SharedAddrs returns the local addresses of the socket every peer shares
// (UDP_PORT, or the ephemeral one of Config.SharedSocket); none when each
// peer has sockets of its own.
func (e *Engine) SharedAddrs() []net.Addr {
	if e.mux == nil {
		return nil
	}
	return e.mux.GetListenAddresses()
}

// Stats returns the current counts.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	s := Stats{Peers: len(e.peers)}
	for p := range e.peers {
		if !p.connectedFlag {
			continue // Answer may still be adding down-tracks; none has sent
		}
		if p.egress.Load() != nil {
			s.DirectPeers++
		}
		for _, d := range p.downs {
			s.DownTracks++
			packets, bytes, refused := d.counts()
			s.PacketsOut += packets
			s.BytesOut += bytes
			s.NACKsRefused += refused
		}
	}
	e.mu.Unlock()
	s.Tracks = int(e.tracks.Load())
	s.PacketsIn = e.count.packetsIn.Load()
	s.BytesIn = e.count.bytesIn.Load()
	s.Malformed = e.count.malformed.Load()
	s.Duplicates = e.count.duplicates.Load()
	s.PacketsOut += e.count.packetsOut.Load()
	s.BytesOut += e.count.bytesOut.Load()
	s.NACKs = e.count.nacks.Load()
	s.Resent = e.count.resent.Load()
	s.PLIs = e.count.plis.Load()
	s.NACKsSent = e.count.nacksSent.Load()
	s.Overload = e.count.overload.Load()
	s.IngressDirect = e.count.ingressDirect.Load()
	s.IngressFallback = e.count.ingressFallback.Load()
	s.IngressReplays = e.count.ingressReplays.Load()
	s.KeyframeRequests = e.count.keyframeRequests.Load()
	s.TWCCSent = e.count.twccSent.Load()
	s.NACKsRefused += e.count.nacksRefused.Load()
	s.Refused = e.Refusals()
	return s
}

// Close closes every peer and waits, until ctx ends, for their goroutines
// (and so for their tracks' final packets) to finish.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	if !e.closed {
		close(e.stop)
	}
	e.closed = true
	peers := make([]*Peer, 0, len(e.peers))
	for p := range e.peers {
		peers = append(peers, p)
	}
	e.mu.Unlock()
	for _, p := range peers {
		p.Close()
	}
	<-e.done
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("rtc: waiting for peers: %w", ctx.Err())
	}
	if e.mux != nil {
		if cerr := e.mux.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("rtc: close UDP mux: %w", cerr)
		}
	}
	return err
}
