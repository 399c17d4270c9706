package room

import (
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc"
)

// The mixing policy (issue 17): a device with fewer slots than the
// conversation has active speakers (others than its own user) hears, on
// its last slot, a mix of the active speakers it does not hear on its other
// slots, never its own user's voice. Each distinct mix is a local
// synthetic up-track (Mix) that down-tracks bind to like any source, so
// that a slot switching between forwarded and mixed audio stays one
// continuous stream (rtc.DownTrack rewrites SSRC, sequence numbers and
// timestamps, and sets the marker bit on the switch). The mixing itself is
// a pipeline stage's (stages.Mixer); the policy only tells it which mixes
// are heard (MixSession.SetMixes) and which tracks it must mix
// (Track.Mixed). A conversation where nobody needs a mix has no session:
// nothing is decoded or encoded.

// MixMode says which devices hear a mix.
type MixMode int

// Mix modes.
const (
	// MixOff: no mixing; devices hear only forwarded speakers.
	MixOff MixMode = iota
	// MixOverflow: a device with fewer slots than the active speakers
	// it would hear gets the speakers that do not fit mixed on its last
	// slot.
	MixOverflow
	// MixAlways: every device gets one mix of the conversation on its
	// first slot (its other slots stay silent).
	MixAlways
)

// String is the mode as the mixer stage's setting names it.
func (m MixMode) String() string {
	switch m {
	case MixOverflow:
		return "overflow"
	case MixAlways:
		return "always"
	}
	return "off"
}

// Mixing is a mixing stage as the speaker policy sees it (Config.Mixing;
// stages.Mixer implements it).
type Mixing interface {
	// MixMode is when devices get a mix.
	MixMode() MixMode
	// StartMixing starts mixing conversation c, when a first device of
	// c needs a mix. It is called with c's lock held and must not block.
	StartMixing(c *Conversation) MixSession
}

// MixSession mixes one conversation, from StartMixing to Stop.
type MixSession interface {
	// SetMixes says which distinct mixes c's devices hear now. It is
	// called with c's lock held and must not block; mixes are not
	// modified afterwards.
	SetMixes(mixes []*Mix)
	// Stop ends the session once no device needs a mix, or when the
	// conversation ends; the session's packets are not written after it
	// returns. It is called with c's lock held.
	Stop()
}

// Mix is one distinct mix that devices of a conversation hear: the sum of
// the conversation's mixed speakers without those of Without, sent as the
// packets of a local up-track to the down-tracks bound to it.
type Mix struct {
	// Key identifies the mix: its Without, sorted.
	Key string
	// Without are the ids (rtc.UpTrack.ID) of the tracks the mix leaves
	// out: the device's own user's, and those it hears on other slots.
	Without []string

	up      *rtc.UpTrack
	targets atomic.Pointer[[]*rtc.DownTrack]

	// Owned by the writing goroutine (the session's).
	pkt rtp.Packet
	raw []byte
	seq uint16
	ts  uint32 // random origin of the mix's timestamps
}

// newMix returns the mix of key, leaving out without, on a new up-track
// of conversation c.
func newMix(c *Conversation, key string, without []string) *Mix {
	ssrc := rand.Uint32()
	up := rtc.NewUpTrack(claim.Claim{UserID: "mix", ClientID: "mix:" + c.ID}, ssrc, 0)
	x := &Mix{Key: key, Without: without, up: up, seq: uint16(rand.Uint32()), ts: rand.Uint32(), raw: make([]byte, 1500)}
	x.pkt.Header = rtp.Header{Version: 2, PayloadType: 111, SSRC: ssrc}
	return x
}

// UpTrack is the mix's local up-track, the source its down-tracks carry.
func (x *Mix) UpTrack() *rtc.UpTrack { return x.up }

// Targets returns the down-tracks that carry the mix now (shared, not to
// be modified).
func (x *Mix) Targets() []*rtc.DownTrack {
	if p := x.targets.Load(); p != nil {
		return *p
	}
	return nil
}

// Write sends one encoded 20 ms frame of the mix, of RTP timestamp ts on
// the mixer's clock, to the down-tracks that carry it, with level (RFC
// 6464, -dBov) in their audio level extension (its V bit set when voiced).
// It is called from one goroutine, the session's, and allocates nothing.
// It reports the copies written and failed, with the first error.
func (x *Mix) Write(payload []byte, ts uint32, level uint8, voiced bool, now time.Time) (written, failed uint64, err error) {
	downs := x.Targets()
	x.pkt.SequenceNumber = x.seq
	x.pkt.Timestamp = x.ts + ts
	x.pkt.Payload = payload
	x.seq++
	// Kept for NACK answers, as a received packet is.
	if n, err := x.pkt.MarshalTo(x.raw); err == nil {
		x.up.Cache(x.raw[:n])
	}
	if len(downs) == 0 {
		return 0, 0, nil
	}
	b := level & 0x7f
	if voiced {
		b |= 0x80
	}
	return rtc.Fanout(downs, x.up.SendBuffer(), x.up, &x.pkt, b, true, now.UnixNano())
}

// Mixed reports whether the track's packets go to its conversation's mix
// session: it is an active speaker that some mix heard now includes.
func (t *Track) Mixed() bool { return t.mixed.Load() }

// MixSession returns the conversation's mix session, or nil while no
// device needs a mix. Safe on the packet path.
func (c *Conversation) MixSession() MixSession {
	if h := c.session.Load(); h != nil {
		return h.s
	}
	return nil
}

// sessionBox holds a MixSession for an atomic pointer.
type sessionBox struct{ s MixSession }

// mixPlan collects, during one reassignment, the mixes devices need and
// the down-tracks that carry each.
type mixPlan struct {
	keys  []string
	mixes map[string]*Mix
	downs map[string][]*rtc.DownTrack
}

// add binds slot to c's mix that leaves out without: the mix c has under
// that key, else a new one. The slot carries it from here on, so that the
// policy never lists it among a speaker's targets.
func (p *mixPlan) add(c *Conversation, slot *rtc.DownTrack, without []string) {
	slices.Sort(without)
	without = slices.Compact(without)
	key := strings.Join(without, "\x00")
	if p.downs == nil {
		p.downs, p.mixes = map[string][]*rtc.DownTrack{}, map[string]*Mix{}
	}
	x := p.mixes[key]
	if x == nil {
		if x = c.mixes[key]; x == nil {
			x = newMix(c, key, without)
		}
		p.mixes[key] = x
		p.keys = append(p.keys, key)
	}
	p.downs[key] = append(p.downs[key], slot)
	slot.SetSource(x.up)
}

// mixDevice fills d's slots under mixing mode, if d needs a mix: then the
// slots it hears speakers on are assigned as usual, the mix slot is noted
// in plan, and it reports true. Otherwise it does nothing and reports
// false. Callers hold c.mu.
func (c *Conversation) mixDevice(d *device, mode MixMode, ranked []*Track, byUp map[*rtc.UpTrack]*Track, now int64, plan *mixPlan) bool {
	k := len(d.slots)
	if mode == MixOff || k == 0 {
		return false
	}
	others := 0
	for _, t := range ranked {
		if !t.ownedBy(d.user) && t.Active(now) {
			others++
		}
	}
	if mode == MixOverflow && others <= k {
		return false
	}
	var fwd []*rtc.DownTrack
	slot := d.slots[0]
	if mode == MixOverflow {
		fwd, slot = d.slots[:k-1], d.slots[k-1]
	} else {
		for _, s := range d.slots[1:] {
			s.SetSource(nil)
		}
	}
	assign(d, fwd, ranked, byUp, now, true)
	// Only active tracks are mixed: leaving out the user's own inactive
	// tracks would change nothing but make a distinct mix per listener.
	var without []string
	for _, t := range ranked {
		if t.ownedBy(d.user) && t.Active(now) {
			without = append(without, t.ID)
		}
	}
	for _, s := range fwd {
		if up := s.Source(); up != nil {
			without = append(without, up.ID)
		}
	}
	plan.add(c, slot, without)
	return true
}

// applyMixes starts, updates or stops c's mix session for plan, binds the
// mix slots, and marks the tracks the mixes need. Callers hold c.mu.
func (c *Conversation) applyMixes(plan *mixPlan, ranked []*Track, now int64) {
	if len(plan.keys) == 0 {
		c.stopMixingLocked()
		return
	}
	mixes := make([]*Mix, 0, len(plan.keys))
	next := make(map[string]*Mix, len(plan.keys))
	for _, key := range plan.keys {
		x := plan.mixes[key]
		downs := plan.downs[key]
		x.targets.Store(&downs)
		next[key] = x
		mixes = append(mixes, x)
	}
	for key, x := range c.mixes {
		if next[key] == nil {
			x.targets.Store(nil)
		}
	}
	c.mixes = next
	// A track is mixed when it is active and some mix heard includes it.
	for _, t := range ranked {
		in := false
		if t.Active(now) {
			for _, x := range mixes {
				if !slices.Contains(x.Without, t.ID) {
					in = true
					break
				}
			}
		}
		t.mixed.Store(in)
	}
	if c.session.Load() == nil {
		c.session.Store(&sessionBox{c.mixing.StartMixing(c)})
	}
	c.session.Load().s.SetMixes(mixes)
}

// stopMixingLocked ends c's mix session, if any. Callers hold c.mu.
func (c *Conversation) stopMixingLocked() {
	for _, t := range c.tracks {
		t.mixed.Store(false)
	}
	for _, x := range c.mixes {
		x.targets.Store(nil)
	}
	c.mixes = nil
	if h := c.session.Swap(nil); h != nil {
		h.s.Stop()
	}
}

// nextExpiry returns when the first active speaker of ranked stops being
// active (unix ns), 0 if none is: the policy runs again then, so that a
// mix ends after its speakers' hangover.
func nextExpiry(ranked []*Track, now int64) int64 {
	var first int64
	for _, t := range ranked {
		if until := t.activeUntil.Load(); until > now && (first == 0 || until < first) {
			first = until
		}
	}
	return first
}
