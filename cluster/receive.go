package cluster

import (
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// The receiving side: one subscription per conversation this router
// listens in, and in it one remote track per relayed publisher.

// Bounds of one relay subscription's queue in nats.go (its own goroutine
// delivers in order); past them nats.go drops and counts (Dropped).
const (
	subPendingMsgs  = 4096
	subPendingBytes = 4 << 20
)

// relaySub receives one conversation's relayed media.
type relaySub struct {
	n    *Node
	conv string
	sub  *nats.Subscription

	// mu guards tracks: the subscription's goroutine and the expiry take
	// it, nothing else.
	mu     sync.Mutex
	tracks map[uint64]*remoteTrack
	closed bool
}

// remoteTrack is a publisher of another router, as fed here.
type remoteTrack struct {
	t      *room.Track // nil: refused (retried after a while)
	sink   rtc.TrackSink
	last   int64  // unix ns of its last frame, or of the refusal
	origin uint64 // the publisher's router
}

// follow subscribes to the relay subjects of convs (sorted) and leaves
// the others.
func (n *Node) follow(convs []string) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	var gone []*relaySub
	for c, s := range n.subs {
		if _, ok := slices.BinarySearch(convs, c); !ok {
			gone = append(gone, s)
			delete(n.subs, c)
		}
	}
	for _, c := range convs {
		if n.subs[c] != nil {
			continue
		}
		s := &relaySub{n: n, conv: c, tracks: make(map[uint64]*remoteTrack)}
		sub, err := n.nc.Subscribe(n.relaySubject(c), s.onMsg)
		if err != nil {
			n.log.Warn("cluster: cannot subscribe to a relay", "conversation", c, "err", err)
			continue
		}
		_ = sub.SetPendingLimits(subPendingMsgs, subPendingBytes)
		s.sub = sub
		n.subs[c] = s
	}
	n.mu.Unlock()
	for _, s := range gone {
		s.close()
	}
}

// onMsg handles one relay message, on the subscription's goroutine.
func (s *relaySub) onMsg(m *nats.Msg) {
	s.receive(m.Data, time.Now())
}

// receive handles one relay message: a frame, or a batch whose frames it
// handles in order. A message counts in once one of its frames is another
// router's.
func (s *relaySub) receive(b []byte, now time.Time) {
	if len(b) == 0 || b[0] != frameBatch {
		if s.handle(b, now) {
			s.n.count.natsIn.Add(1)
		}
		return
	}
	r, err := readBatch(b)
	if err != nil {
		s.n.count.malformed.Add(1)
		return
	}
	theirs := false
	for f, ok := r.next(); ok; f, ok = r.next() {
		theirs = s.handle(f, now) || theirs
	}
	if theirs {
		s.n.count.natsIn.Add(1)
	}
}

// handle feeds one frame into its remote track, and says whether it was
// another router's frame.
func (s *relaySub) handle(b []byte, now time.Time) (theirs bool) {
	n := s.n
	f, err := parseFrame(b)
	if err != nil {
		n.count.malformed.Add(1)
		return false
	}
	if f.origin == n.origin {
		return false // this router's own, echoed by NATS
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true
	}
	if f.kind == kindMessage {
		n.count.messagesIn.Add(1)
		n.rooms.Deliver(s.conv, room.Identity{ID: string(f.part), Claim: claim.Claim{UserID: string(f.user), ClientID: string(f.client)}, Display: string(f.display)}, f.raw)
		return true
	}
	rt := s.tracks[f.key]
	if f.kind == kindEnd {
		if rt != nil {
			delete(s.tracks, f.key)
			s.end(rt)
		}
		return true
	}
	n.count.in.Add(1)
	if rt == nil {
		rt = s.open(f, now)
		s.tracks[f.key] = rt
	}
	if rt.t == nil {
		if now.UnixNano()-rt.last > int64(time.Second) {
			delete(s.tracks, f.key) // retried at the next frame
		}
		n.count.dropNoTrack.Add(1)
		return true
	}
	rt.last = now.UnixNano()
	if !rt.t.Cache(f.raw) {
		n.count.duplicates.Add(1) // see rtc.UpTrack.Cache
		return true
	}
	// The speaker policy runs on this router's clock: the chain sees the
	// local arrival; the publisher's (f.arrival) measures the hop.
	if n.hop != nil && f.arrival > 0 {
		n.hop.Observe(float64(now.UnixNano()-f.arrival) / 1e9)
	}
	if err := rt.sink.WriteRTP(f.raw, now); err != nil {
		n.count.malformed.Add(1)
	}
	return true
}

// open makes the remote track of f's publisher. Callers hold s.mu.
func (s *relaySub) open(f frame, now time.Time) *remoteTrack {
	n := s.n
	user, client := string(f.user), string(f.client)
	c, ssrc := claim.Claim{UserID: user, ClientID: client}, binary.BigEndian.Uint32(f.raw[8:12])
	var up *rtc.UpTrack
	if kind := kindOf(f.codec); kind == webrtc.RTPCodecTypeAudio {
		up = rtc.NewUpTrack(c, ssrc, f.ext)
	} else {
		// Its subscribers' keyframe requests go back to the publisher's
		// router (Node.onKeyframe there).
		subj, key := n.keySubject(f.origin), f.key
		up = rtc.NewRelayedUpTrack(c, ssrc, kind, codecs[f.codec].RTPCodecCapability, f.ext, func() { n.askKeyframe(subj, key) })
	}
	rt := &remoteTrack{last: now.UnixNano(), origin: f.origin}
	var t *room.Track
	var err error
	if len(f.part) == 0 {
		t, err = n.rooms.AddRemoteTrack(s.conv, user, up)
	} else {
		t, err = n.rooms.AddRemoteParticipantTrack(s.conv, room.Identity{ID: string(f.part), Claim: c, Display: string(f.display)}, up)
	}
	if err != nil {
		if !errors.Is(err, room.ErrNoConversation) {
			n.log.Warn("cluster: remote track refused", "conversation", s.conv, "user", user, "participant", string(f.part), "err", err)
		}
		return rt
	}
	sink, err := n.relayed.OpenRelayed(t)
	if err != nil {
		n.rooms.RemoveRemoteTrack(t)
		n.log.Warn("cluster: remote track's pipeline", "conversation", s.conv, "user", user, "err", err)
		return rt
	}
	rt.t, rt.sink = t, sink
	n.count.remoteTracks.Add(1)
	n.log.Info("cluster: remote track started", "conversation", s.conv, "user", user, "client", client, "participant", string(f.part), "track", up.ID)
	return rt
}

// end ends a remote track. Callers hold s.mu.
func (s *relaySub) end(rt *remoteTrack) {
	if rt.t == nil {
		return
	}
	s.n.rooms.RemoveRemoteTrack(rt.t)
	rt.sink.Close()
	s.n.count.remoteTracks.Add(-1)
	s.n.log.Info("cluster: remote track ended", "conversation", s.conv, "track", rt.t.ID)
	rt.t = nil
}

// expire ends the remote tracks silent since before now-idle.
func (s *relaySub) expire(now time.Time, idle time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rt := range s.tracks {
		if now.UnixNano()-rt.last > int64(idle) {
			delete(s.tracks, k)
			s.end(rt)
		}
	}
}

// endOrigin ends the remote tracks relayed from the router whose frames
// carry origin (0: none), and returns how many it ended.
func (s *relaySub) endOrigin(origin uint64) (ended int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rt := range s.tracks {
		if rt.origin == origin {
			delete(s.tracks, k)
			if rt.t != nil {
				ended++
			}
			s.end(rt)
		}
	}
	return ended
}

// close unsubscribes and ends every remote track.
func (s *relaySub) close() {
	_ = s.sub.Unsubscribe()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for k, rt := range s.tracks {
		delete(s.tracks, k)
		s.end(rt)
	}
}

// relaySubs returns the relay subscriptions now.
func (n *Node) relaySubs() []*relaySub {
	n.mu.Lock()
	defer n.mu.Unlock()
	subs := make([]*relaySub, 0, len(n.subs))
	for _, s := range n.subs {
		subs = append(subs, s)
	}
	return subs
}

// expireRemote ends the idle remote tracks of every subscription.
func (n *Node) expireRemote(now time.Time) {
	for _, s := range n.relaySubs() {
		s.expire(now, n.cfg.RemoteIdle)
	}
}

// endOrigin ends the remote tracks relayed from the router whose frames
// carry origin, in every subscription, and returns how many it ended.
func (n *Node) endOrigin(origin uint64) (ended int) {
	if origin == 0 {
		return 0
	}
	for _, s := range n.relaySubs() {
		ended += s.endOrigin(origin)
	}
	return ended
}
