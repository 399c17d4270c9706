package rtc

import (
	"encoding/binary"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc/codec"
)

// UpTrack is one track a device publishes: audio or video, of any codec
// the router negotiates. Its fields are fixed when it starts.
type UpTrack struct {
	// ID is "<clientid>/<ssrc>", unique while the track lives.
	ID string
	// SSRC is the publisher's RTP SSRC.
	SSRC uint32
	// Kind is audio or video.
	Kind webrtc.RTPCodecType
	// Codec is the negotiated codec (MIME type, clock rate, fmtp).
	Codec webrtc.RTPCodecCapability
	// LevelExtID is the negotiated id of the RFC 6464 audio level header
	// extension, or 0 when the publisher does not send it.
	LevelExtID uint8
	// Started is when the first packet arrived.
	Started time.Time

	mime  string // Codec.MimeType in lower case
	peer  *Peer  // nil for a track not received over WebRTC
	owner claim.Claim

	// cache keeps the latest packets, for down-tracks to answer NACKs.
	cache *packetCache

	// Keyframe requests to the publisher, at most one per keyInterval.
	keyInterval time.Duration
	lastKeyReq  atomic.Int64 // unix ns
	fir         bool         // the publisher negotiated FIR but not PLI
	firSeq      atomic.Uint32
	// askKeyframe carries the keyframe requests of a relayed track (no
	// peer) to its publisher's router; nil: nowhere.
	askKeyframe func()

	// buf is the packet path's SendBuffer.
	buf SendBuffer
}

// DefaultKeyframeInterval is the shortest time between two keyframe
// requests to one publisher's track.
const DefaultKeyframeInterval = 500 * time.Millisecond

// Packet cache sizes, per up-track: 1.28 s of 20 ms audio frames, and about
// a second of 2 Mbit/s video.
const (
	audioCache = 64
	videoCache = 512
)

// NewUpTrack returns an Opus up-track of device c that is not received over
// WebRTC: for tests, tools and relays that feed a pipeline directly.
func NewUpTrack(c claim.Claim, ssrc uint32, levelExtID uint8) *UpTrack {
	return newUpTrack(c, ssrc, webrtc.RTPCodecTypeAudio, codec.Opus.RTPCodecCapability, levelExtID)
}

// NewRelayedUpTrack returns an up-track of device c of either kind with
// codec cc that is not received over WebRTC but relayed from another
// router: its keyframe requests (RequestKeyframe, throttled like a
// WebRTC track's) call askKeyframe, which must not block on the network,
// so that down-tracks gate video on it like on a local track.
func NewRelayedUpTrack(c claim.Claim, ssrc uint32, kind webrtc.RTPCodecType, cc webrtc.RTPCodecCapability, levelExtID uint8, askKeyframe func()) *UpTrack {
	t := newUpTrack(c, ssrc, kind, cc, levelExtID)
	t.askKeyframe = askKeyframe
	return t
}

// SetKeyframeInterval sets the shortest time between two keyframe
// requests of a track made with NewRelayedUpTrack (a WebRTC track takes
// Config.KeyframeInterval). Call it before the track is used.
func (t *UpTrack) SetKeyframeInterval(d time.Duration) { t.keyInterval = d }

func newUpTrack(c claim.Claim, ssrc uint32, kind webrtc.RTPCodecType, cc webrtc.RTPCodecCapability, levelExtID uint8) *UpTrack {
	n := audioCache
	if kind == webrtc.RTPCodecTypeVideo {
		n = videoCache
	}
	return &UpTrack{
		ID:          c.ClientID + "/" + strconv.FormatUint(uint64(ssrc), 10),
		SSRC:        ssrc,
		Kind:        kind,
		Codec:       cc,
		LevelExtID:  levelExtID,
		Started:     time.Now(),
		mime:        strings.ToLower(cc.MimeType),
		owner:       c,
		cache:       newPacketCache(n),
		keyInterval: DefaultKeyframeInterval,
	}
}

// Claim returns the publishing device's identity.
func (t *UpTrack) Claim() claim.Claim { return t.owner }

// Peer returns the publisher's peer, or nil for a track not received over
// WebRTC.
func (t *UpTrack) Peer() *Peer { return t.peer }

// SendBuffer returns the buffer of the track's packet path: the goroutine
// that reads the track uses it to write to down-tracks.
func (t *UpTrack) SendBuffer() *SendBuffer { return &t.buf }

// Cache keeps raw, a received packet of the track, for NACK answers, and
// reports whether it did: false for a packet too short for RTP or whose
// sequence number the cache already holds. Whoever feeds the track calls
// it for every packet, before forwarding it, and drops a packet it was
// false for; raw is copied.
//
// The first packet of a sequence number wins, and only it is forwarded:
// a down-track answers a NACK with the cached packet under the SRTP index
// it sent that sequence number with, so a second, different packet under
// the same number (a hostile publisher's replay, or a relay's) would be
// encrypted under a nonce already used for other bytes, which with
// AES-GCM gives away the session's authentication key.
func (t *UpTrack) Cache(raw []byte) bool { return t.cache.put(raw) }

// RequestKeyframe asks the publisher for a keyframe (PLI, or FIR where the
// publisher negotiated only that), unless one was asked for less than the
// keyframe interval ago. It never blocks on the network and does nothing
// for audio. It reports whether a request went out.
func (t *UpTrack) RequestKeyframe() bool {
	if t.Kind != webrtc.RTPCodecTypeVideo || t.peer == nil && t.askKeyframe == nil {
		return false
	}
	now := time.Now().UnixNano()
	last := t.lastKeyReq.Load()
	if now-last < int64(t.keyInterval) || !t.lastKeyReq.CompareAndSwap(last, now) {
		return false
	}
	if t.peer == nil {
		t.askKeyframe()
		return true
	}
	var pkt rtcp.Packet = &rtcp.PictureLossIndication{MediaSSRC: t.SSRC}
	if t.fir {
		pkt = &rtcp.FullIntraRequest{MediaSSRC: t.SSRC, FIR: []rtcp.FIREntry{{SSRC: t.SSRC, SequenceNumber: uint8(t.firSeq.Add(1))}}}
	}
	if err := t.peer.pc.WriteRTCP([]rtcp.Packet{pkt}); err != nil {
		t.peer.log.Debug("keyframe request not sent", "track", t.ID, "err", err)
		return false
	}
	t.peer.e.count.keyframeRequests.Add(1)
	return true
}

// packetCache holds the latest packets of one up-track, by sequence
// number. The track's reader writes it; subscribers' RTCP readers read it
// when they answer NACKs. Its lock is the track's own.
type packetCache struct {
	mu   sync.Mutex
	pkts []cachedPacket
}

type cachedPacket struct {
	seq uint16
	ok  bool
	b   []byte
}

func newPacketCache(n int) *packetCache { return &packetCache{pkts: make([]cachedPacket, n)} }

// put copies raw, an RTP packet, into the cache, unless the cache holds
// its sequence number already (see UpTrack.Cache); it reports whether it
// did. Buffers are reused: in the steady state it allocates nothing.
func (c *packetCache) put(raw []byte) bool {
	if len(raw) < 12 {
		return false
	}
	seq := binary.BigEndian.Uint16(raw[2:4])
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &c.pkts[int(seq)%len(c.pkts)]
	if e.ok && e.seq == seq {
		return false
	}
	e.seq, e.ok = seq, true
	e.b = append(e.b[:0], raw...)
	return true
}

// get appends the packet with sequence number seq to dst, if the cache
// still holds it.
func (c *packetCache) get(seq uint16, dst []byte) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := &c.pkts[int(seq)%len(c.pkts)]
	if !e.ok || e.seq != seq {
		return dst, false
	}
	return append(dst, e.b...), true
}
