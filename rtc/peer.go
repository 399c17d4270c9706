package rtc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/stamp"
	"github.com/beepvoice/router/rtc/codec"
)

// Handler is told of a peer's life by the layer that owns the peer. Its
// methods are called from the peer's own goroutines, never with a lock of
// the peer held.
type Handler interface {
	// Connected is called once ICE and DTLS are up, before Peer.Connected
	// is closed: down-tracks can send from now on.
	Connected(p *Peer)
	// Closed is called once, when the peer closes, connected or not.
	Closed(p *Peer)
	// Published is called when a remote track starts (on its first packet);
	// the returned sink receives every packet of t from the track's reader.
	// An error refuses the track: its packets are not read.
	Published(t *UpTrack) (TrackSink, error)
	// Unpublished is called when t ends, before its sink is closed.
	Unpublished(t *UpTrack)
}

// TrackSink takes the packets of one up-track, from one goroutine.
type TrackSink interface {
	// WriteRTP handles one RTP packet; raw is reused after it returns.
	WriteRTP(raw []byte, arrival time.Time) error
	// Close ends the track.
	Close()
}

// Peer is the peer connection of one device.
type Peer struct {
	// Claim identifies the device.
	Claim claim.Claim

	e   *Engine
	net *peerNet // nil in tests that make peers by hand
	// streams bounds the SRTP and SRTCP streams pion keeps for the peer.
	streams *streamGuard
	pc      *webrtc.PeerConnection
	log     *slog.Logger
	h       Handler
	opts    PeerOptions

	downs []*DownTrack // fixed once Answer or Offer returns

	connectedFlag bool // Engine.mu

	connected     chan struct{}
	connectedOnce sync.Once
	done          chan struct{}
	closeOnce     sync.Once
	deadline      *time.Timer

	// neg serialises the negotiation (Answer, Offer, SetAnswer) with the
	// pion close in Close: a negotiation that Close overtook fails at once
	// with ErrClosed instead of running against a closed connection. (The
	// sockets its ICE agent may still open are the peer's net's: Close
	// releases them.)
	neg sync.Mutex

	mu          sync.Mutex // guards closing, reason, wg.Add, remoteSet, pending, candidates, upTracks, refusedTrack
	closing     bool
	reason      error // why the peer closed (Err), set with closing
	wg          sync.WaitGroup
	remoteSet   bool
	pending     []webrtc.ICECandidateInit
	onCandidate atomic.Pointer[func(webrtc.ICECandidateInit)]

	// candidates are the remote candidates admitted (see admitCandidate),
	// by what makes pion tell two apart.
	candidates map[string]struct{}
	// upTracks counts the published tracks being read; refusedTrack is
	// set once one was refused for MaxTracksPerPeer (logged once).
	upTracks     int
	refusedTrack bool

	// The direct egress path (egress.go): down-tracks send with egress
	// when it is set. arrivals are the kernel arrival times of the socket of the
	// selected pair.
	egress       atomic.Pointer[egress]
	arrivals     atomic.Pointer[stamp.Table]
	egressMu     sync.Mutex
	keys         *srtpKeys  // nil: down-tracks write through pion
	sealer       *gcmSealer // the down-tracks' one AES-GCM sealer, or
	cm           *cmSealer  // their one AES-CM sealer; both nil: a context each
	pair         *webrtc.ICECandidatePair
	egressLogged bool

	// The direct ingress path (ingress.go): in is the peer's; inConn and
	// inTo are the socket and remote address it is routed from, under
	// egressMu.
	in     ingress
	inConn *trackedConn
	inTo   netip.AddrPort
}

func newPeer(e *Engine, c claim.Claim, pc *webrtc.PeerConnection, h Handler, opts PeerOptions) *Peer {
	return &Peer{
		Claim:     c,
		e:         e,
		pc:        pc,
		h:         h,
		opts:      opts,
		log:       e.log.With("user", c.UserID, "client", c.ClientID),
		connected: make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// start installs the handlers. The Engine counts the peer in its WaitGroup
// until every goroutine of the peer has ended.
func (p *Peer) start() {
	p.deadline = time.AfterFunc(p.e.cfg.ConnectTimeout, func() {
		select {
		case <-p.connected:
		default:
			p.log.Info("peer did not connect in time", "timeout", p.e.cfg.ConnectTimeout, "why", p.failureWhy())
			p.CloseWith(ErrConnectTimeout)
		}
	})
	p.pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		p.log.Debug("peer connection state", "state", s.String())
		switch s {
		case webrtc.PeerConnectionStateConnected:
			p.connectedOnce.Do(func() {
				p.deadline.Stop()
				p.startEgress()
				if !p.e.peerConnected(p) {
					return
				}
				p.h.Connected(p)
				close(p.connected)
				p.log.Info("peer connected", "down_tracks", len(p.downs), "srtp", p.egressDesc(), "direct_ingress", p.in.open.Load() != nil)
			})
		case webrtc.PeerConnectionStateFailed:
			p.logFailure()
			p.CloseWith(ErrConnectionFailed)
		case webrtc.PeerConnectionStateClosed:
			p.Close()
		}
	})
	p.pc.OnICECandidate(func(c *webrtc.ICECandidate) {
		if c == nil {
			return
		}
		if f := p.onCandidate.Load(); f != nil {
			(*f)(c.ToJSON())
		}
	})
	p.pc.OnTrack(p.readTrack)
	p.watchRoute()
}

// enter counts the caller as one of the peer's goroutines, unless the peer
// is closing; a caller that entered calls p.wg.Done when it ends. Close
// waits for them only after closing is set, so no Add races the Wait.
func (p *Peer) enter() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	p.wg.Add(1)
	return true
}

// goroutine runs f on a goroutine counted by the peer, unless the peer is
// closing.
func (p *Peer) goroutine(f func()) {
	if !p.enter() {
		return
	}
	go func() {
		defer p.wg.Done()
		f()
	}()
}

// OnCandidate sets the function that receives the router's ICE candidates
// as they are gathered (for trickle). Set it before Answer.
func (p *Peer) OnCandidate(f func(webrtc.ICECandidateInit)) { p.onCandidate.Store(&f) }

// Answer applies the client's offer and returns the router's answer. The
// answer carries the candidates gathered so far; call WaitGathered for an
// answer that carries all of them. An error wrapping ErrBadOffer means the
// offer was refused; the caller should then Close the peer.
func (p *Peer) Answer(offerSDP string) (string, error) {
	p.neg.Lock()
	defer p.neg.Unlock()
	if p.isClosing() {
		return "", ErrClosed
	}
	o, err := parseOffer(offerSDP, p.e.cfg.MaxDownTracks, p.e.cfg.MaxMediaLines, p.opts.Video)
	if err != nil {
		return "", err
	}
	offerSDP = p.filterCandidates(offerSDP)
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offerSDP}); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
	p.remoteApplied()

	if err := p.attachDownTracks(o); err != nil {
		return "", err
	}

	answer, err := p.pc.CreateAnswer(nil)
	if err != nil {
		return "", fmt.Errorf("create answer: %w", err)
	}
	if err := p.pc.SetLocalDescription(answer); err != nil {
		return "", fmt.Errorf("set local description: %w", err)
	}
	return p.pc.LocalDescription().SDP, nil
}

// attachDownTracks gives every receiving m-line of the offer (audio, and
// video for a video peer) a DownTrack, without a source: the owner's
// policy binds them.
//
// Senders must come from pc.AddTrack: one made with API.NewRTPSender would
// use the shared API, bypassing this connection's interceptors (NACK cache,
// sender reports) and its negotiated media engine. AddTrack fills the first
// transceiver of the track's kind without a sender, so every m-line gets a
// down-track in order; then the down-tracks of m-lines on which the client
// does not receive (sendonly, inactive) are removed, which restores their
// direction. They are removed only at the end: removal frees the
// transceiver for AddTrack.
func (p *Peer) attachDownTracks(o offer) error {
	free := map[webrtc.RTPCodecType]int{}
	for _, tr := range p.pc.GetTransceivers() {
		if k := tr.Kind(); tr.Sender() == nil && (k == webrtc.RTPCodecTypeAudio || k == webrtc.RTPCodecTypeVideo && p.opts.Video) {
			free[k]++
		}
	}
	var detach []*webrtc.RTPSender
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio, webrtc.RTPCodecTypeVideo} {
		for i := 0; i < free[kind]; i++ {
			d := newDownTrack(p, kind, len(p.downs))
			sender, err := p.pc.AddTrack(d)
			if err != nil {
				return fmt.Errorf("add down-track: %w", err)
			}
			var mid string
			for _, tr := range p.pc.GetTransceivers() {
				if tr.Sender() == sender {
					mid = tr.Mid()
				}
			}
			switch {
			case mid == "":
				return fmt.Errorf("%w: an %s m-line cannot be answered", ErrBadOffer, kind)
			case !slices.Contains(o.receiving, mid):
				detach = append(detach, sender)
				continue
			}
			d.sender = sender
			p.downs = append(p.downs, d)
		}
	}
	for _, sender := range detach {
		if err := p.pc.RemoveTrack(sender); err != nil {
			return fmt.Errorf("detach down-track: %w", err)
		}
	}
	return nil
}

// ErrBadAnswer wraps every reason a client's answer to the router's offer
// is refused.
var ErrBadAnswer = errors.New("bad answer")

// AddDownTrack adds a down-track of kind, on an m-line of its own on which
// the router only sends, to a connection the router offers (a feed). Call
// it before Offer; video needs a video peer.
func (p *Peer) AddDownTrack(kind webrtc.RTPCodecType) (*DownTrack, error) {
	if kind == webrtc.RTPCodecTypeVideo && !p.opts.Video {
		return nil, errors.New("rtc: video down-track on a peer without video")
	}
	if p.pc.LocalDescription() != nil {
		return nil, errors.New("rtc: down-tracks are added before the offer")
	}
	d := newDownTrack(p, kind, len(p.downs))
	tr, err := p.pc.AddTransceiverFromTrack(d, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly})
	if err != nil {
		return nil, fmt.Errorf("add %s down-track: %w", kind, err)
	}
	d.sender = tr.Sender()
	p.downs = append(p.downs, d)
	return d, nil
}

// Offer makes the router's offer for a connection it initiates, sets it as
// the local description and returns it with the candidates gathered by the
// time gathering completes or ctx ends: the router never trickles its own.
func (p *Peer) Offer(ctx context.Context) (string, error) {
	if err := p.offer(); err != nil {
		return "", err
	}
	return p.WaitGathered(ctx), nil
}

// offer makes and sets the local offer, under p.neg.
func (p *Peer) offer() error {
	p.neg.Lock()
	defer p.neg.Unlock()
	if p.isClosing() {
		return ErrClosed
	}
	offer, err := p.pc.CreateOffer(nil)
	if err != nil {
		return fmt.Errorf("create offer: %w", err)
	}
	if err := p.pc.SetLocalDescription(offer); err != nil {
		return fmt.Errorf("set local description: %w", err)
	}
	return nil
}

// isClosing reports whether Close has begun.
func (p *Peer) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}

// SetAnswer applies the client's answer to Offer. Candidates that arrived
// before it are added now. An error wraps ErrBadAnswer.
func (p *Peer) SetAnswer(answerSDP string) error {
	p.neg.Lock()
	defer p.neg.Unlock()
	if p.isClosing() {
		return ErrClosed
	}
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(answerSDP); err != nil {
		return fmt.Errorf("%w: not valid SDP: %v", ErrBadAnswer, err)
	}
	answerSDP = p.filterCandidates(answerSDP)
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answerSDP}); err != nil {
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	p.remoteApplied()
	return nil
}

// remoteApplied adds the candidates queued before the remote description.
func (p *Peer) remoteApplied() {
	p.mu.Lock()
	p.remoteSet = true
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()
	for _, c := range pending {
		if err := p.pc.AddICECandidate(c); err != nil {
			p.log.Info("bad ICE candidate from client", "err", err)
		}
	}
}

// WaitGathered waits until ICE gathering completes, or ctx ends, and returns
// the answer with every candidate gathered by then.
func (p *Peer) WaitGathered(ctx context.Context) string {
	gathered := webrtc.GatheringCompletePromise(p.pc)
	select {
	case <-gathered:
	case <-ctx.Done():
	case <-p.done:
	}
	if d := p.pc.LocalDescription(); d != nil {
		return d.SDP
	}
	return ""
}

// AddCandidate adds a remote ICE candidate; candidates that arrive before the
// remote description (the client's offer, or its answer to the router's)
// are queued until it is applied, up to a bound. An empty candidate (the
// end of the client's candidates) is accepted and ignored. A candidate in
// a forbidden network, or past maxRemoteCandidates, is refused with an
// error wrapping ErrCandidateRefused; the peer goes on.
func (p *Peer) AddCandidate(c webrtc.ICECandidateInit) error {
	if c.Candidate == "" {
		return nil
	}
	if err := p.admitCandidate(c.Candidate); err != nil {
		return err
	}
	p.mu.Lock()
	if !p.remoteSet {
		if len(p.pending) >= maxPendingCandidates {
			p.mu.Unlock()
			return errors.New("too many ICE candidates before the offer")
		}
		p.pending = append(p.pending, c)
		p.mu.Unlock()
		return nil
	}
	p.mu.Unlock()
	if err := p.pc.AddICECandidate(c); err != nil {
		return fmt.Errorf("add ICE candidate: %w", err)
	}
	return nil
}

const maxPendingCandidates = 64

// maxRemoteCandidates bounds the remote ICE candidates of one peer, in its
// SDP and trickled together: the addresses the router checks connectivity
// to. A browser has a few per network interface.
const maxRemoteCandidates = 20

// ErrCandidateRefused wraps the reason a remote ICE candidate is refused:
// a forbidden network (Config.ForbiddenNetworks), or too many candidates.
var ErrCandidateRefused = errors.New("ICE candidate refused")

// admitCandidate decides on one remote candidate, the value of an
// a=candidate line with or without its "candidate:" prefix. It refuses,
// and counts, one that names an address in a forbidden network, or a new
// one past maxRemoteCandidates. What does not parse, or names no address
// (an mDNS name: the router resolves none), is left to pion, which refuses
// or ignores it.
func (p *Peer) admitCandidate(value string) error {
	c, err := ice.UnmarshalCandidate(strings.TrimPrefix(value, "candidate:"))
	if err != nil {
		return nil
	}
	addr, err := netip.ParseAddr(c.Address())
	if err != nil {
		return nil
	}
	if p.e.socks.forbidden.contains(addr) {
		p.e.socks.refused.candidates.Add(1)
		return fmt.Errorf("%w: %s is in a forbidden network", ErrCandidateRefused, c.Address())
	}
	key := c.String() + " " + c.TCPType().String()
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.candidates[key]; ok {
		return nil // pion ignores it too
	}
	if len(p.candidates) >= maxRemoteCandidates {
		p.e.socks.refused.candidates.Add(1)
		return fmt.Errorf("%w: more than %d candidates", ErrCandidateRefused, maxRemoteCandidates)
	}
	if p.candidates == nil {
		p.candidates = make(map[string]struct{})
	}
	p.candidates[key] = struct{}{}
	return nil
}

// filterCandidates returns a remote description without the candidates
// admitCandidate refuses, before pion sees them.
func (p *Peer) filterCandidates(sdpText string) string {
	out, dropped := filterCandidates(sdpText, p.admitCandidate)
	if dropped > 0 {
		p.log.Info("ICE candidates of the remote description refused", "dropped", dropped)
	}
	return out
}

// Refusals counts what an Engine refused its clients, since it started.
type Refusals struct {
	// Candidates counts remote ICE candidates refused, trickled or in
	// SDP: in a forbidden network, or past the bound per peer.
	Candidates uint64
	// Sends counts datagrams ICE asked a socket to send to a forbidden
	// network (a peer-reflexive candidate, say), refused by the socket.
	Sends uint64
	// Tracks counts published tracks refused past MaxTracksPerPeer.
	Tracks uint64
	// Streams counts peers closed for naming, in their RTP and RTCP,
	// more SSRCs than they could have negotiated (ErrStreamLimit).
	Streams uint64
	// Sockets counts new peers refused because their ICE sockets would
	// pass Config.MaxSockets (ErrSocketLimit).
	Sockets uint64
}

// Refusals returns the Engine's counts of refusals.
func (e *Engine) Refusals() Refusals {
	return Refusals{
		Candidates: e.socks.refused.candidates.Load(),
		Sends:      e.socks.refused.sends.Load(),
		Tracks:     e.socks.refused.tracks.Load(),
		Streams:    e.socks.refused.streams.Load(),
		Sockets:    e.socks.budget.refused.Load(),
	}
}

// Connected is closed once the peer connection is established and its
// Handler's Connected has returned.
func (p *Peer) Connected() <-chan struct{} { return p.connected }

// ICEConnectionState returns the peer's ICE state: disconnected once
// nothing, not even a keepalive, has arrived for the disconnected timeout
// (the usual sign of a client that left: pion v3 does not see DTLS
// close_notify), failed after the failed timeout, when the peer closes.
func (p *Peer) ICEConnectionState() webrtc.ICEConnectionState { return p.pc.ICEConnectionState() }

// Done is closed when the peer is closed.
func (p *Peer) Done() <-chan struct{} { return p.done }

// Err returns why the peer closed, as given to CloseWith (ErrConnectTimeout,
// ErrConnectionFailed, ErrStreamLimit, or its owner's reason, such as a
// replacement), or nil: the peer is open, or was closed without a reason.
func (p *Peer) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.reason
}

// Reasons a peer closes by itself (Err).
var (
	// ErrConnectTimeout: the peer did not connect within ConnectTimeout.
	ErrConnectTimeout = errors.New("did not connect in time")
	// ErrConnectionFailed: ICE or DTLS failed, or the client went silent
	// past the ICE timeouts.
	ErrConnectionFailed = errors.New("connection failed")
	// ErrStreamLimit: the client's RTP and RTCP named more SSRCs than its
	// m-lines could have (see streamGuard).
	ErrStreamLimit = errors.New("packets name too many SSRCs")
)

// streamLimit is the bound on a peer's SRTP and SRTCP streams (see
// streamGuard) for offers of at most mediaLines m-lines: two streams per
// m-line (four with RTX), and 32 SSRCs the client may name of its own.
func streamLimit(mediaLines int) int32 { return int32(4*mediaLines + 32) }

// tripStreams closes the peer once its streams passed the bound.
func (p *Peer) tripStreams() {
	p.e.socks.refused.streams.Add(1)
	p.log.Warn("closing the peer: its packets name more SSRCs than it negotiated", "max_streams", streamLimit(p.e.cfg.MaxMediaLines))
	go p.CloseWith(ErrStreamLimit) // pion holds its session's lock here
}

// DownTracks returns the peer's down-tracks, in m-line order. The slice is
// fixed once Answer or Offer has returned.
func (p *Peer) DownTracks() []*DownTrack { return p.downs }

// Close closes the peer connection and releases the peer. Its goroutines end
// soon after; Engine.Close waits for them.
func (p *Peer) Close() { p.CloseWith(nil) }

// CloseWith closes the peer as Close does, for reason, which Err returns
// from then on. Only the first Close or CloseWith counts.
func (p *Peer) CloseWith(reason error) {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.reason = reason
		p.mu.Unlock()
		if p.deadline != nil {
			p.deadline.Stop()
		}
		close(p.done)
		p.e.peerClosed(p)
		p.h.Closed(p)
		p.sayGoodbye()
		p.neg.Lock() // a negotiation in progress finishes first
		err := p.pc.Close()
		p.neg.Unlock()
		if err != nil {
			p.log.Debug("close peer connection", "err", err)
		}
		p.egressMu.Lock()
		p.setIngressRoute(nil, netip.AddrPort{})
		p.egressMu.Unlock()
		if p.net != nil {
			if n := p.net.closeAll(); n > 0 {
				p.log.Debug("closed sockets the ICE agent left open", "sockets", n)
			}
		}
		p.log.Info("peer closed")
		go func() {
			p.wg.Wait()
			p.e.wg.Done()
		}()
	})
}

// sayGoodbye tells a connected device, by RTCP BYE on its down-tracks' SSRCs,
// that the router ends the streams. The /connect socket is gone by now, so
// RTCP is the one channel left; browsers end the tracks on it.
func (p *Peer) sayGoodbye() {
	select {
	case <-p.connected:
	default:
		return
	}
	var ssrcs []uint32
	for _, d := range p.downs {
		d.mu.Lock()
		if d.writer != nil {
			ssrcs = append(ssrcs, d.ssrc)
		}
		d.mu.Unlock()
	}
	if len(ssrcs) == 0 {
		return
	}
	if err := p.pc.WriteRTCP([]rtcp.Packet{&rtcp.Goodbye{Sources: ssrcs, Reason: "router closing"}}); err != nil {
		p.log.Debug("RTCP BYE not sent", "err", err)
	}
}

// feedback reports whether fbs has the RTCP feedback typ with parameter.
func feedback(fbs []webrtc.RTCPFeedback, typ, parameter string) bool {
	for _, fb := range fbs {
		if fb.Type == typ && fb.Parameter == parameter {
			return true
		}
	}
	return false
}

// readTrack is pion's OnTrack handler: it feeds one published track into
// the sink its Handler gives until the track ends.
func (p *Peer) readTrack(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	cp := remote.Codec()
	if !codec.Supported(cp.MimeType) {
		p.log.Info("ignoring a track of a codec the router does not forward", "codec", cp.MimeType)
		return
	}
	// A refused track is never read: pion keeps its packets in the
	// track's buffer, bounded by the BufferFactory (TrackBuffer,
	// VideoTrackBuffer), and drops the rest. It costs no goroutine.
	if !p.admitTrack(remote) {
		return
	}
	if !p.enter() {
		p.trackDone()
		return
	}
	defer p.wg.Done()

	var levelID uint8
	for _, e := range receiver.GetParameters().HeaderExtensions {
		if e.URI == sdp.AudioLevelURI {
			levelID = uint8(e.ID)
		}
	}
	t := newUpTrack(p.Claim, uint32(remote.SSRC()), remote.Kind(), cp.RTPCodecCapability, levelID)
	t.peer = p
	t.keyInterval = p.e.cfg.KeyframeInterval
	t.fir = feedback(cp.RTCPFeedback, webrtc.TypeRTCPFBCCM, "fir") && !feedback(cp.RTCPFeedback, webrtc.TypeRTCPFBNACK, "pli")
	sink, err := p.h.Published(t)
	if err != nil {
		p.trackDone()
		p.log.Error("track refused", "track", t.ID, "err", err)
		return
	}
	p.e.tracks.Add(1)
	p.goroutine(func() { p.guard("RTCP reader", func() { drainRTCP(receiver) }) })
	ended := false
	end := func() {
		ended = true
		p.e.tracks.Add(-1)
		p.trackDone()
		p.h.Unpublished(t)
	}
	defer func() {
		// A panic in a stage costs this peer, not the process: the other
		// calls go on.
		if r := recover(); r != nil {
			p.log.Error("panic on the packet path: closing the peer", "track", t.ID, "panic", r, "stack", string(debug.Stack()))
			if !ended {
				end()
			}
			p.Close()
		}
	}()
	p.log.Info("track started", "track", t.ID, "codec", cp.MimeType, "audio_level_ext", t.LevelExtID)

	buf := make([]byte, 1500)
	var bad, dups, pkts, bytes uint64
	flush := func() {
		p.e.count.packetsIn.Add(pkts)
		p.e.count.bytesIn.Add(bytes)
		pkts, bytes = 0, 0
	}
	for {
		n, _, err := remote.Read(buf)
		if err != nil {
			break
		}
		if pkts++; pkts == 64 {
			flush()
		}
		bytes += uint64(n)
		if !t.cache.put(buf[:n]) {
			// Too short (the chain would refuse it too), or a sequence
			// number already forwarded: see UpTrack.Cache.
			if n >= 12 {
				dups++
				continue
			}
		}
		if err := sink.WriteRTP(buf[:n], p.arrival(buf[:n])); err != nil {
			if bad == 0 {
				p.log.Info("dropping malformed RTP", "track", t.ID, "err", err)
			}
			bad++
			p.e.count.malformed.Add(1)
		}
	}
	flush()
	p.e.count.duplicates.Add(dups)
	end()
	sink.Close()
	p.log.Info("track ended", "track", t.ID, "malformed", bad, "duplicates", dups)
}

// admitTrack counts a published track against MaxTracksPerPeer; past it,
// it refuses the track, counts the refusal and logs the first one.
func (p *Peer) admitTrack(remote *webrtc.TrackRemote) bool {
	p.mu.Lock()
	if p.upTracks < p.e.cfg.MaxTracksPerPeer {
		p.upTracks++
		p.mu.Unlock()
		return true
	}
	first := !p.refusedTrack
	p.refusedTrack = true
	p.mu.Unlock()
	p.e.socks.refused.tracks.Add(1)
	if first {
		p.log.Warn("refusing published tracks past the bound: not read", "max", p.e.cfg.MaxTracksPerPeer, "ssrc", uint32(remote.SSRC()), "kind", remote.Kind().String())
	}
	return false
}

// trackDone gives back the count admitTrack took.
func (p *Peer) trackDone() {
	p.mu.Lock()
	p.upTracks--
	p.mu.Unlock()
}

// guard runs f; a panic in it closes the peer, logged with its stack, and
// never reaches the process.
func (p *Peer) guard(what string, f func()) {
	defer func() {
		if r := recover(); r != nil {
			p.Fail(what, r)
		}
	}()
	f()
}

// Fail closes the peer after a panic r in what (a goroutine of the packet
// path), logging r with the stack of the panicking goroutine: call it from
// the deferred function that recovered. The other peers go on.
func (p *Peer) Fail(what string, r any) {
	p.log.Error("panic: closing the peer", "in", what, "panic", r, "stack", string(debug.Stack()))
	go p.Close() // Close may wait for locks the panicking code held
}

// maxQueued bounds how long before its read a packet's kernel arrival time
// may be: an older entry is another packet's (its sequence number came
// round again).
const maxQueued = 10 * time.Second

// arrival returns when RTP packet b reached the router: the kernel's
// receive time of its datagram if the socket noted it, else now.
func (p *Peer) arrival(b []byte) time.Time {
	now := time.Now()
	tb := p.arrivals.Load()
	ssrc, seq, ok := stamp.RTP(b)
	if tb == nil || !ok {
		return now
	}
	at, ok := tb.Lookup(ssrc, seq)
	if !ok || at > now.UnixNano() || now.UnixNano()-at > int64(maxQueued) {
		return now
	}
	return time.Unix(0, at)
}

// readFeedback drains a down-track sender's RTCP (see drainRTCP) and
// handles what it says (feedback).
func (p *Peer) readFeedback(d *DownTrack, sender *webrtc.RTPSender) {
	defer func() {
		if r := recover(); r != nil {
			p.Fail("RTCP reader", r)
		}
	}()
	buf := make([]byte, 1500)
	var seqs []uint16
	for {
		n, _, err := sender.Read(buf)
		if err != nil {
			return
		}
		seqs = d.feedback(buf[:n], &p.e.count, seqs)
	}
}

// feedback handles one RTCP datagram that d's subscriber sent: it counts
// the NACKs and PLIs, answers NACKs for what d sent directly (pion's NACK
// interceptor answers for what went through pion), and passes keyframe
// requests on to the source (throttled there). Anything else, and what does
// not parse, is ignored. seqs is scratch space, returned for reuse.
func (d *DownTrack) feedback(b []byte, c *counters, seqs []uint16) []uint16 {
	pkts, err := rtcp.Unmarshal(b)
	if err != nil {
		return seqs
	}
	for _, pk := range pkts {
		switch pk := pk.(type) {
		case *rtcp.TransportLayerNack:
			c.nacks.Add(1)
			seqs = seqs[:0]
			for _, n := range pk.Nacks {
				n.Range(func(seq uint16) bool {
					seqs = append(seqs, seq)
					return true
				})
			}
			c.resent.Add(uint64(d.resend(seqs)))
		case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
			c.plis.Add(1)
			if src := d.Source(); src != nil {
				src.RequestKeyframe() // throttled per publisher track
			}
		}
	}
	return seqs
}

// drainRTCP reads RTCP until the sender or receiver stops. Reading drives
// pion's interceptors: the NACK responder answers from its packet cache
// here, and the report interceptors see what they need. PLI is meaningless
// for audio (there are no key frames), so it is not forwarded.
func drainRTCP(r interface {
	Read(b []byte) (int, interceptor.Attributes, error)
}) {
	buf := make([]byte, 1500)
	for {
		if _, _, err := r.Read(buf); err != nil {
			return
		}
	}
}
