// Package cluster makes several routers on one NATS serve one
// conversation together.
//
//   - Memberships are shared: every join is written to a JetStream
//     key-value bucket (one key per user, the bucket's TTL is the
//     membership TTL), which every router watches into a local cache. A
//     join made elsewhere moves the user's devices here at once
//     (room.Manager.Apply); a device of a user this router knows nothing of
//     takes the cached membership when it connects (room.Membership). The
//     packet path never reads the bucket: the permission gate reads the
//     room layer's membership, as on one router.
//   - Media is relayed once per router: each router announces, on
//     <prefix>interest, the conversations it has listening devices in (a
//     heartbeat, and at once on a change), and subscribes to
//     <prefix>relay.<conversation> for those. A router publishes the
//     packets of its local publishers (after decryption, with their audio
//     level extension and arrival time) on the subject of their
//     conversation while some other router is interested in it: one copy,
//     whatever the number of routers and listeners there. A router that
//     receives them feeds each publisher into a remote up-track, which the
//     speaker slots treat like a local one (room.Manager.AddRemoteTrack),
//     through the pipeline stages that run on relayed tracks only
//     (pipeline.Pipeline.OpenRelayed): bites are made once, where the
//     publisher is connected.
//
// The packet path takes no lock shared between tracks, allocates nothing
// and never writes to the network: frames go through bounded queues (one
// per sender goroutine) with counted drops. A sender publishes the frames
// of one conversation that it finds queued together as one NATS message, a
// batch (frame.go), so that per-message costs are paid once for them.
package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/pion/webrtc/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// Defaults of Config.
const (
	DefaultPrefix     = "beep.cluster."
	DefaultBucket     = "beep-memberships"
	DefaultHeartbeat  = 500 * time.Millisecond
	DefaultRemoteIdle = 3 * time.Second
	DefaultQueue      = 1024
	// DefaultStoreTimeout bounds one write to the membership bucket.
	DefaultStoreTimeout = 2 * time.Second
	// storeRetry is how often an unavailable bucket is tried again.
	storeRetry = 5 * time.Second
)

// Config configures a Node.
type Config struct {
	// NATS is the connection every router of the cluster shares a server
	// (or a NATS cluster) through. Required.
	NATS *nats.Conn
	// Logger is the structured logger; nil means slog.Default().
	Logger *slog.Logger
	// ID names this router in the cluster; empty: a random one.
	ID string
	// Prefix starts every subject; empty: DefaultPrefix.
	Prefix string
	// Bucket is the JetStream key-value bucket of memberships; empty:
	// DefaultBucket.
	Bucket string
	// Replicas of the bucket (3 on a 3-node NATS cluster); 0: 1.
	Replicas int
	// MembershipTTL is the bucket's TTL: a membership not written again
	// for this long is forgotten. Zero: room.DefaultMembershipTTL.
	MembershipTTL time.Duration
	// Heartbeat is how often the router announces its interest; a router
	// silent for three of its heartbeats is no longer relayed to. Zero:
	// DefaultHeartbeat.
	Heartbeat time.Duration
	// RemoteIdle ends a remote track that sent nothing for this long (its
	// router died, or the end frame was lost). Zero: DefaultRemoteIdle.
	RemoteIdle time.Duration
	// Queue bounds the frames waiting for each sender goroutine; past it
	// frames are dropped and counted. Zero: DefaultQueue.
	Queue int
	// StoreTimeout bounds one write to the bucket. Zero:
	// DefaultStoreTimeout.
	StoreTimeout time.Duration
}

// Rooms is what a Node needs of the room layer (room.Manager).
type Rooms interface {
	Apply(userID, convID string) error
	Listening() []string
	ConnectedMembers() map[string]string
	AddRemoteTrack(convID, userID string, up *rtc.UpTrack) (*room.Track, error)
	AddRemoteParticipantTrack(convID string, who room.Identity, up *rtc.UpTrack) (*room.Track, error)
	Deliver(convID string, who room.Identity, data []byte)
	RemoveRemoteTrack(t *room.Track)
}

// RelayedSink opens the pipeline chain of a remote track
// (pipeline.Pipeline).
type RelayedSink interface {
	OpenRelayed(t *room.Track) (rtc.TrackSink, error)
}

// Node is one router's part of the cluster. Make it with New, give it to
// the room layer (Sink, room.Config.Membership, room.Config.Changed), then
// Start it with the rooms.
type Node struct {
	cfg Config
	log *slog.Logger
	nc  *nats.Conn
	// origin marks this router's frames (frame.go).
	origin uint64

	shards []*sendShard
	next   atomic.Uint32 // round robin of tracks over shards

	interest interest
	mem      membership

	rooms   Rooms
	relayed RelayedSink

	kick chan struct{} // capacity 1: the listening set may have changed
	// forceAnnounce asks the loop to announce even if nothing changed.
	forceAnnounce atomic.Bool

	// Guarded by mu: the relay subscriptions, by conversation.
	mu      sync.Mutex
	subs    map[string]*relaySub
	started bool
	closed  bool

	interestSub *nats.Subscription
	// keySub receives the keyframe requests of other routers for this
	// router's relayed video tracks, which locals holds by track key
	// (uint64 → *room.Track).
	keySub *nats.Subscription
	locals sync.Map
	quit   chan struct{}
	bg     sync.WaitGroup

	count counters
	// hop observes the time from a relayed packet's arrival at its
	// publisher's router to its arrival here; nil without metrics.
	hop prometheus.Observer
}

// counters are the Node's counts; they only grow.
type counters struct {
	out, in, dropQueue, dropNoTrack, malformed, sendErrors atomic.Uint64
	natsOut, natsIn                                        atomic.Uint64
	duplicates                                             atomic.Uint64
	keyframesOut, keyframesIn, keyframesNoTrack            atomic.Uint64
	messagesOut, messagesIn                                atomic.Uint64
	storeErrors                                            atomic.Uint64
	remoteTracks                                           atomic.Int64
}

// New returns a Node: its sender goroutines run, its membership bucket is
// opened (or retried in the background while NATS has no JetStream), and it
// relays nothing until Start.
func New(cfg Config) (*Node, error) {
	if cfg.NATS == nil {
		return nil, errors.New("cluster: Config.NATS is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ID == "" {
		cfg.ID = fmt.Sprintf("r%016x", rand.Uint64())
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MembershipTTL <= 0 {
		cfg.MembershipTTL = room.DefaultMembershipTTL
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.RemoteIdle <= 0 {
		cfg.RemoteIdle = DefaultRemoteIdle
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = DefaultStoreTimeout
	}
	n := &Node{
		cfg:  cfg,
		log:  cfg.Logger.With("router", cfg.ID),
		nc:   cfg.NATS,
		kick: make(chan struct{}, 1),
		subs: make(map[string]*relaySub),
		quit: make(chan struct{}),
	}
	for n.origin == 0 {
		n.origin = rand.Uint64()
	}
	n.interest.init()
	n.mem.init(n)
	for range min(max(runtime.GOMAXPROCS(0), 1), 8) {
		s := newSendShard(cfg.Queue)
		n.shards = append(n.shards, s)
		n.bg.Add(1)
		go n.send(s)
	}
	return n, nil
}

// ID returns the router's id in the cluster.
func (n *Node) ID() string { return n.cfg.ID }

// Start relays between this router's rooms and the others': it subscribes
// to the interest of the others, announces its own, feeds remote tracks to
// relayed, and applies the memberships written elsewhere to rooms.
func (n *Node) Start(rooms Rooms, relayed RelayedSink) error {
	n.mu.Lock()
	if n.started || n.closed {
		n.mu.Unlock()
		return errors.New("cluster: node started twice or closed")
	}
	n.started = true
	n.rooms, n.relayed = rooms, relayed
	n.mu.Unlock()
	sub, err := n.nc.Subscribe(n.cfg.Prefix+"interest", n.onInterest)
	if err != nil {
		return fmt.Errorf("cluster: subscribe to interest: %w", err)
	}
	n.interestSub = sub
	ks, err := n.nc.Subscribe(n.keySubject(n.origin), n.onKeyframe)
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("cluster: subscribe to keyframe requests: %w", err)
	}
	n.keySub = ks
	n.bg.Add(3)
	go n.loop()
	go n.mem.run()
	go n.mem.refresh()
	// Ask the others for their interest now rather than at their next
	// heartbeat.
	n.publishInterest(opSync, nil)
	return nil
}

// Changed tells the Node that the conversations this router listens in
// may have changed (room.Config.Changed). It never blocks.
func (n *Node) Changed() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// Close says goodbye to the other routers, ends the remote tracks and the
// relay, and stops the Node's goroutines. Call it once the rooms are
// closed: the end of their tracks is still relayed.
func (n *Node) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	started := n.started
	subs := n.subs
	n.subs = map[string]*relaySub{}
	n.mu.Unlock()
	if n.interestSub != nil {
		_ = n.interestSub.Unsubscribe()
	}
	if n.keySub != nil {
		_ = n.keySub.Unsubscribe()
	}
	if started {
		n.publishInterest(opBye, nil)
	}
	for _, s := range subs {
		s.close()
	}
	close(n.quit)
	n.mem.stop()
	n.bg.Wait()
}

// sendShard is one sender goroutine's bounded queue of frames, with the
// free frames it recycles: the packet path takes a free frame, fills it and
// queues it, never waiting.
type sendShard struct {
	q    chan *outFrame
	free chan *outFrame

	// The sender goroutine's own: the frames it took from q at one
	// wake-up (capacity maxWoken), and the buffer it makes batches in
	// (grown once to the largest batch, then reused).
	woken []*outFrame
	batch []byte
}

// outFrame is a frame, or a keyframe request, waiting to be published.
type outFrame struct {
	subj string
	b    []byte
	// frame: b is a relay frame (else a keyframe request); batch: it may
	// share a batch with the frames of its subject (every router
	// interested in them took batches when it was queued).
	frame, batch bool
}

// frameCap is the capacity of a free frame's buffer: an RTP packet of any
// size a WebRTC peer sends, its ids and the header. A frame that grew past
// maxKeptCap (a participant's message) gets a buffer of frameCap again
// once published, so that rare large messages do not leave every free
// frame large.
const (
	frameCap   = 1600
	maxKeptCap = 4 << 10
)

// maxWoken bounds the frames a sender goroutine takes from its queue at
// one wake-up to batch them.
const maxWoken = 128

func newSendShard(n int) *sendShard {
	s := &sendShard{q: make(chan *outFrame, n), free: make(chan *outFrame, n), woken: make([]*outFrame, 0, maxWoken)}
	for range n {
		s.free <- &outFrame{b: make([]byte, 0, frameCap)}
	}
	return s
}

// send publishes the frames of s until the Node closes, then those still
// queued.
func (n *Node) send(s *sendShard) {
	defer n.bg.Done()
	for {
		select {
		case f := <-s.q:
			n.publishQueued(s, f)
		case <-n.quit:
			for {
				select {
				case f := <-s.q:
					n.publishQueued(s, f)
				default:
					return
				}
			}
		}
	}
}

// publishQueued publishes f and what is queued behind it now, without
// waiting for more: the frames of one subject go out together as batches
// (in their order, up to maxBatch frames and maxBatchBytes or the
// server's max_payload each), a frame alone on its subject as itself,
// keyframe requests as they are. Frames never wait for a batch to fill:
// only those that queued while the goroutine was busy (or asleep) share
// one, which is when the per-message costs would add up.
func (n *Node) publishQueued(s *sendShard, f *outFrame) {
	w := append(s.woken[:0], f)
take:
	for len(w) < cap(w) {
		select {
		case f := <-s.q:
			w = append(w, f)
		default:
			break take
		}
	}
	limit := maxBatchBytes
	if len(w) > 1 {
		if mp := int(n.nc.MaxPayload()); mp > 0 && mp < limit {
			limit = mp
		}
	}
	for i, f := range w {
		if f == nil {
			continue // in an earlier batch
		}
		w[i] = nil
		if !f.frame {
			if err := n.nc.Publish(f.subj, f.b); err != nil {
				n.count.sendErrors.Add(1)
			}
			s.recycle(f)
			continue
		}
		// The frames of f's subject behind it, in order, while they fit.
		var b []byte
		frames, size := 1, batchHeaderLen+2+len(f.b)
		for j := i + 1; j < len(w) && frames < maxBatch && f.batch && len(f.b) <= maxBatched; j++ {
			g := w[j]
			if g == nil || g.subj != f.subj {
				continue
			}
			if !g.batch || len(g.b) > maxBatched || size+2+len(g.b) > limit {
				break // g starts the subject's next message
			}
			if b == nil {
				b = appendBatched(startBatch(s.batch), f.b)
			}
			b = appendBatched(b, g.b)
			frames, size = frames+1, size+2+len(g.b)
			w[j] = nil
			s.recycle(g)
		}
		msg := f.b
		if b != nil {
			msg, s.batch = b, b[:0]
		}
		if err := n.nc.Publish(f.subj, msg); err != nil {
			n.count.sendErrors.Add(uint64(frames))
		} else {
			n.count.out.Add(uint64(frames))
			n.count.natsOut.Add(1)
		}
		s.recycle(f)
	}
	s.woken = w[:0]
}

// recycle returns published frame f to the free frames of s, with a
// buffer of frameCap if it grew past maxKeptCap.
func (s *sendShard) recycle(f *outFrame) {
	if cap(f.b) > maxKeptCap {
		f.b = make([]byte, 0, frameCap)
	}
	s.free <- f
}

// take returns a free frame of s to fill and queue, or nil, counted as
// dropped, when s is full. It never waits.
func (n *Node) take(s *sendShard) *outFrame {
	select {
	case f := <-s.free:
		return f
	default:
		n.count.dropQueue.Add(1)
		return nil
	}
}

// enqueue queues a frame on s, or counts it dropped when s is full; batch:
// it may share a batch with others (outFrame).
func (n *Node) enqueue(s *sendShard, subj string, batch bool, kind, cn, ext byte, key uint64, arrival int64, p *publisher, raw []byte) {
	f := n.take(s)
	if f == nil {
		return
	}
	f.subj, f.frame, f.batch = subj, true, batch
	f.b = appendFrame(f.b[:0], kind, cn, ext, n.origin, key, arrival, p, raw)
	s.q <- f // never blocks: q holds as many frames as there are
}

// Broadcast implements room.MessageRelay: the message goes, as one frame
// queued like a packet's, to the routers listening in convID, if any. It
// is dropped and counted when the queue is full (queue_full), or when its
// ids are too long for a frame (malformed).
func (n *Node) Broadcast(convID string, who room.Identity, data []byte) {
	if n.Relaying(convID) == 0 {
		return
	}
	p := publisher{user: who.Claim.UserID, client: who.Claim.ClientID, part: who.ID, display: truncate(who.Display, maxID)}
	if len(p.user) > maxID || len(p.client) > maxID || len(p.part) > maxID || p.part == "" {
		n.count.malformed.Add(1)
		return
	}
	s := n.shards[int(n.next.Add(1))%len(n.shards)]
	n.count.messagesOut.Add(1)
	// Never batched: a message is rare, and its conversation's interest
	// entry (whether every router there takes batches) is a track's.
	n.enqueue(s, n.relaySubject(convID), false, kindMessage, codecOpus, 0, 0, 0, &p, data)
}

// keySubject is the subject on which the router whose frames carry origin
// takes keyframe requests for its relayed video tracks.
func (n *Node) keySubject(origin uint64) string {
	return fmt.Sprintf("%skey.%016x", n.cfg.Prefix, origin)
}

// askKeyframe asks a publisher's router, on subj (keySubject), for a
// keyframe of its relayed track key: an 8-byte message, queued like a
// frame (the caller may be a packet path). The remote up-track throttles
// the requests (rtc.UpTrack.RequestKeyframe).
func (n *Node) askKeyframe(subj string, key uint64) {
	s := n.shards[key%uint64(len(n.shards))]
	f := n.take(s)
	if f == nil {
		return
	}
	f.subj, f.frame, f.batch = subj, false, false
	f.b = binary.BigEndian.AppendUint64(f.b[:0], key)
	n.count.keyframesOut.Add(1)
	s.q <- f
}

// onKeyframe passes another router's keyframe request on to the local
// publisher of the track it names, throttled there like a local
// subscriber's.
func (n *Node) onKeyframe(m *nats.Msg) {
	if len(m.Data) != 8 {
		n.count.malformed.Add(1)
		return
	}
	t, ok := n.locals.Load(binary.BigEndian.Uint64(m.Data))
	if !ok {
		n.count.keyframesNoTrack.Add(1)
		return
	}
	n.count.keyframesIn.Add(1)
	t.(*room.Track).RequestKeyframe()
}

// relaySubject is the subject the media of conversation conv is relayed on.
func (n *Node) relaySubject(conv string) string { return n.cfg.Prefix + "relay." + token(conv) }

// Sink wraps inner, the pipeline, so that the tracks of this router's
// publishers (audio, and video of a codec frames name) are also relayed to
// the routers interested in their conversation.
func (n *Node) Sink(inner room.Sink) room.Sink { return &sink{n: n, inner: inner} }

type sink struct {
	n     *Node
	inner room.Sink
}

// Open opens inner's chain for t and, for a track of a Beep user or of a
// participant (a front-end's publisher), wraps it in a relay.
func (s *sink) Open(t *room.Track) (rtc.TrackSink, error) {
	ts, err := s.inner.Open(t)
	part := t.Participant()
	if err != nil || t.Remote() || t.UserID() == "" && part == nil {
		return ts, err
	}
	cn, ok := codecOf(t.Codec.MimeType)
	if !ok {
		s.n.log.Warn("not relaying a track of a codec relay frames do not name", "track", t.ID, "codec", t.Codec.MimeType)
		return ts, nil
	}
	c := t.Claim()
	pub := publisher{user: c.UserID, client: c.ClientID}
	if part != nil {
		pub.part, pub.display = part.ID, truncate(part.Display, maxID)
	}
	if len(pub.user) > maxID || len(pub.client) > maxID || len(pub.part) > maxID {
		s.n.log.Warn("not relaying a track whose ids are too long", "track", t.ID)
		return ts, nil
	}
	n := s.n
	r := &trackRelay{
		n: n, inner: ts, t: t,
		key:   rand.Uint64(),
		codec: cn,
		shard: n.shards[int(n.next.Add(1))%len(n.shards)],
		pub:   pub,
	}
	if t.Kind == webrtc.RTPCodecTypeVideo {
		n.locals.Store(r.key, t) // other routers ask it for keyframes
	}
	return r, nil
}

// truncate returns s cut to at most n bytes, on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// trackRelay relays one local publisher's track, from the track's reader
// goroutine.
type trackRelay struct {
	n     *Node
	inner rtc.TrackSink
	t     *room.Track
	key   uint64
	codec byte // its number in frames
	shard *sendShard
	pub   publisher

	// The conversation of the last packet, its subject and interest.
	conv *room.Conversation
	subj string
	ent  *interestEntry
}

// WriteRTP relays the packet to the interested routers, then runs the
// local chain.
func (r *trackRelay) WriteRTP(raw []byte, arrival time.Time) error {
	c := r.t.Conversation() // what the gate reads: the membership now
	if c != r.conv {
		r.switchTo(c)
	}
	if r.ent != nil && r.ent.routers.Load() > 0 && len(raw) >= 12 && raw[0]>>6 == 2 {
		r.n.enqueue(r.shard, r.subj, r.ent.plain.Load() == 0, kindPacket, r.codec, r.t.LevelExtID, r.key, arrival.UnixNano(), &r.pub, raw)
	}
	return r.inner.WriteRTP(raw, arrival)
}

// switchTo follows the publisher into conversation c (nil: none): the
// routers relayed the old one are told the track ended there.
func (r *trackRelay) switchTo(c *room.Conversation) {
	r.end()
	r.conv, r.subj, r.ent = c, "", nil
	if c != nil {
		r.subj = r.n.relaySubject(c.ID)
		r.ent = r.n.interest.hold(c.ID)
	}
}

// end tells the routers relayed the current conversation that the track
// ended there, and lets go of its interest.
func (r *trackRelay) end() {
	if r.ent == nil {
		return
	}
	if r.ent.routers.Load() > 0 {
		r.n.enqueue(r.shard, r.subj, r.ent.plain.Load() == 0, kindEnd, r.codec, 0, r.key, time.Now().UnixNano(), &r.pub, nil)
	}
	r.n.interest.release(r.ent)
	r.ent = nil
}

// Close ends the track here and on the routers it was relayed to.
func (r *trackRelay) Close() {
	r.n.locals.Delete(r.key)
	r.end()
	r.inner.Close()
}

// waitContext returns a context bounded by the store timeout.
func (n *Node) storeContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), n.cfg.StoreTimeout)
}
