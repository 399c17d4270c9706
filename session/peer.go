package session

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/stamp"
)

// Peer is the peer connection of one device.
type Peer struct {
	// Claim identifies the device.
	Claim claim.Claim

	m    *Manager
	pc   *webrtc.PeerConnection
	log  *slog.Logger
	user *User // set by NewPeer, fixed after

	slots []*Slot // fixed once Answer returns

	tracksMu  sync.Mutex
	published []*Track

	connectedFlag bool // Manager.mu

	connected     chan struct{}
	connectedOnce sync.Once
	done          chan struct{}
	closeOnce     sync.Once
	deadline      *time.Timer

	mu          sync.Mutex // guards closing, wg.Add, remoteSet, pending
	closing     bool
	wg          sync.WaitGroup
	remoteSet   bool
	pending     []webrtc.ICECandidateInit
	onCandidate atomic.Pointer[func(webrtc.ICECandidateInit)]

	// The direct egress path (egress.go): slots send with egress when it
	// is set. arrivals are the kernel arrival times of the socket of the
	// selected pair.
	egress       atomic.Pointer[egress]
	arrivals     atomic.Pointer[stamp.Table]
	egressMu     sync.Mutex
	keys         *srtpKeys // nil: slots write through pion
	pair         *webrtc.ICECandidatePair
	egressLogged bool
}

func newPeer(m *Manager, c claim.Claim, pc *webrtc.PeerConnection) *Peer {
	return &Peer{
		Claim:     c,
		m:         m,
		pc:        pc,
		log:       m.log.With("user", c.UserID, "client", c.ClientID),
		connected: make(chan struct{}),
		done:      make(chan struct{}),
	}
}

// start installs the handlers. The Manager counts the peer in its WaitGroup
// until every goroutine of the peer has ended.
func (p *Peer) start() {
	p.m.wg.Add(1)
	p.deadline = time.AfterFunc(p.m.cfg.ConnectTimeout, func() {
		select {
		case <-p.connected:
		default:
			p.log.Info("peer did not connect in time", "timeout", p.m.cfg.ConnectTimeout)
			p.Close()
		}
	})
	p.pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		p.log.Debug("peer connection state", "state", s.String())
		switch s {
		case webrtc.PeerConnectionStateConnected:
			p.connectedOnce.Do(func() {
				p.deadline.Stop()
				p.startEgress()
				p.m.peerConnected(p)
				close(p.connected)
				p.log.Info("peer connected", "slots", len(p.slots))
			})
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
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
	o, err := parseOffer(offerSDP, p.m.cfg.MaxSlots)
	if err != nil {
		return "", err
	}
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offerSDP}); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadOffer, err)
	}
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

	if err := p.attachSlots(o); err != nil {
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

// attachSlots gives every receiving audio m-line of the offer a Slot.
//
// Senders must come from pc.AddTrack: one made with API.NewRTPSender would
// use the shared API, bypassing this connection's interceptors (NACK cache,
// sender reports) and its negotiated media engine. AddTrack fills the first
// audio transceiver without a sender, so every audio m-line gets a slot in
// order; then the slots of m-lines on which the client does not receive
// (sendonly, inactive) are removed, which restores their direction. They
// are removed only at the end: removal frees the transceiver for AddTrack.
func (p *Peer) attachSlots(o offer) error {
	free := 0
	for _, tr := range p.pc.GetTransceivers() {
		if tr.Kind() == webrtc.RTPCodecTypeAudio && tr.Sender() == nil {
			free++
		}
	}
	var detach []*webrtc.RTPSender
	for i := 0; i < free; i++ {
		slot := newSlot(p, len(p.slots))
		sender, err := p.pc.AddTrack(slot)
		if err != nil {
			return fmt.Errorf("add slot: %w", err)
		}
		var mid string
		for _, tr := range p.pc.GetTransceivers() {
			if tr.Sender() == sender {
				mid = tr.Mid()
			}
		}
		switch {
		case mid == "":
			return fmt.Errorf("%w: an audio m-line cannot be answered", ErrBadOffer)
		case !slices.Contains(o.receiving, mid):
			detach = append(detach, sender)
			continue
		}
		p.slots = append(p.slots, slot)
		p.goroutine(func() { p.readFeedback(slot, sender) })
	}
	for _, sender := range detach {
		if err := p.pc.RemoveTrack(sender); err != nil {
			return fmt.Errorf("detach slot: %w", err)
		}
	}
	return nil
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
// offer are queued until it is applied.
func (p *Peer) AddCandidate(c webrtc.ICECandidateInit) error {
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

// Connected is closed once the peer connection is established and its slots
// receive from its user's conversation.
func (p *Peer) Connected() <-chan struct{} { return p.connected }

// Done is closed when the peer is closed.
func (p *Peer) Done() <-chan struct{} { return p.done }

// Slots returns the device's outgoing slots.
func (p *Peer) Slots() []*Slot { return p.slots }

// User returns the device's user.
func (p *Peer) User() *User { return p.user }

// Close closes the peer connection and releases the peer. Its goroutines end
// soon after; Manager.Wait waits for them.
func (p *Peer) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		if p.deadline != nil {
			p.deadline.Stop()
		}
		close(p.done)
		p.m.peerClosed(p)
		p.sayGoodbye()
		if err := p.pc.Close(); err != nil {
			p.log.Debug("close peer connection", "err", err)
		}
		p.log.Info("peer closed")
		go func() {
			p.wg.Wait()
			p.m.wg.Done()
		}()
	})
}

// sayGoodbye tells a connected device, by RTCP BYE on its slots' SSRCs,
// that the router ends the streams. The /connect socket is gone by now, so
// RTCP is the one channel left; browsers end the tracks on it.
func (p *Peer) sayGoodbye() {
	select {
	case <-p.connected:
	default:
		return
	}
	var ssrcs []uint32
	for _, s := range p.slots {
		s.mu.Lock()
		if s.writer != nil {
			ssrcs = append(ssrcs, s.ssrc)
		}
		s.mu.Unlock()
	}
	if len(ssrcs) == 0 {
		return
	}
	if err := p.pc.WriteRTCP([]rtcp.Packet{&rtcp.Goodbye{Sources: ssrcs, Reason: "router closing"}}); err != nil {
		p.log.Debug("RTCP BYE not sent", "err", err)
	}
}

// clearSlots unassigns every slot. Callers hold the conversation's lock.
func (p *Peer) clearSlots() {
	for _, s := range p.slots {
		s.setSource(nil)
	}
}

// readTrack is pion's OnTrack handler: it feeds one published track into
// the sink until the track ends.
func (p *Peer) readTrack(remote *webrtc.TrackRemote, receiver *webrtc.RTPReceiver) {
	if remote.Kind() != webrtc.RTPCodecTypeAudio || !strings.EqualFold(remote.Codec().MimeType, webrtc.MimeTypeOpus) {
		p.log.Info("ignoring a non-Opus track", "codec", remote.Codec().MimeType)
		return
	}
	if !p.enter() {
		return
	}
	defer p.wg.Done()

	var levelID uint8
	for _, e := range receiver.GetParameters().HeaderExtensions {
		if e.URI == sdp.AudioLevelURI {
			levelID = uint8(e.ID)
		}
	}
	t := NewTrack(p.user, p.Claim, uint32(remote.SSRC()), levelID)
	t.peer = p
	sink, err := p.m.cfg.Sink.Open(t)
	if err != nil {
		p.log.Error("pipeline refused a track", "track", t.ID, "err", err)
		return
	}
	p.goroutine(func() { drainRTCP(receiver) })
	p.m.trackStarted(t)
	ended := false
	defer func() {
		// A panic in a stage costs this peer, not the process: the other
		// calls go on.
		if r := recover(); r != nil {
			p.log.Error("panic on the packet path: closing the peer", "track", t.ID, "panic", r, "stack", string(debug.Stack()))
			if !ended {
				p.m.trackEnded(t)
			}
			p.Close()
		}
	}()
	p.log.Info("track started", "track", t.ID, "audio_level_ext", t.LevelExtID)

	buf := make([]byte, 1500)
	var bad, pkts, bytes uint64
	flush := func() {
		p.m.count.packetsIn.Add(pkts)
		p.m.count.bytesIn.Add(bytes)
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
		if err := sink.WriteRTP(buf[:n], p.arrival(buf[:n])); err != nil {
			if bad == 0 {
				p.log.Info("dropping malformed RTP", "track", t.ID, "err", err)
			}
			bad++
			p.m.count.malformed.Add(1)
		}
	}
	flush()
	p.m.trackEnded(t)
	ended = true
	sink.Close()
	p.log.Info("track ended", "track", t.ID, "malformed", bad)
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

// readFeedback drains a slot sender's RTCP (see drainRTCP), counts the
// NACKs and PLIs, and answers NACKs for what the slot sent directly (pion's
// NACK interceptor answers for what went through pion).
func (p *Peer) readFeedback(s *Slot, sender *webrtc.RTPSender) {
	buf := make([]byte, 1500)
	var seqs []uint16
	for {
		n, _, err := sender.Read(buf)
		if err != nil {
			return
		}
		pkts, err := rtcp.Unmarshal(buf[:n])
		if err != nil {
			continue
		}
		for _, pk := range pkts {
			switch pk := pk.(type) {
			case *rtcp.TransportLayerNack:
				p.m.count.nacks.Add(1)
				seqs = seqs[:0]
				for _, n := range pk.Nacks {
					n.Range(func(seq uint16) bool {
						seqs = append(seqs, seq)
						return true
					})
				}
				p.m.count.resent.Add(uint64(s.resend(seqs)))
			case *rtcp.PictureLossIndication:
				p.m.count.plis.Add(1)
			}
		}
	}
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
