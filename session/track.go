package session

import (
	"strconv"
	"sync/atomic"
	"time"

	"github.com/beepvoice/router/claim"
)

// Track is one audio track a device publishes. Its identity fields are fixed
// when it starts; its forwarding state is read and written without locks.
type Track struct {
	// ID is "<clientid>/<ssrc>", unique while the track lives.
	ID string
	// SSRC is the publisher's RTP SSRC.
	SSRC uint32
	// LevelExtID is the negotiated id of the RFC 6464 audio level header
	// extension, or 0 when the publisher does not send it.
	LevelExtID uint8
	// Started is when the first packet arrived.
	Started time.Time

	peer  *Peer // nil for a track not received over WebRTC
	user  *User
	owner claim.Claim

	// activeUntil is when the speaker stops counting as active (unix ns):
	// the last loud packet plus the forwarder's hangover. Zero: never loud.
	activeUntil atomic.Int64
	// waiting is set when the track is active but some device had no slot
	// to give it; the forwarder then asks for reassignment now and then.
	waiting atomic.Bool
	// targets are the slots that receive this track now.
	targets atomic.Pointer[targets]

	// buf is the packet path's SendBuffer.
	buf SendBuffer
}

// targets is an immutable snapshot of the slots assigned to a track within
// one conversation.
type targets struct {
	conv  *Conversation
	slots []*Slot
}

// NewTrack returns a track of user u's device c that is not received over
// WebRTC: for tests and tools that feed a pipeline directly. It takes part
// in no conversation's forwarding.
func NewTrack(u *User, c claim.Claim, ssrc uint32, levelExtID uint8) *Track {
	return &Track{
		ID:         c.ClientID + "/" + strconv.FormatUint(uint64(ssrc), 10),
		SSRC:       ssrc,
		LevelExtID: levelExtID,
		Started:    time.Now(),
		user:       u,
		owner:      c,
	}
}

// User returns the publishing user.
func (t *Track) User() *User { return t.user }

// Claim returns the publishing device's identity.
func (t *Track) Claim() claim.Claim { return t.owner }

// Targets returns the slots that receive the track in conversation c. The
// slice is shared and must not be modified.
func (t *Track) Targets(c *Conversation) []*Slot {
	tg := t.targets.Load()
	if tg == nil || tg.conv != c {
		return nil
	}
	return tg.slots
}

// MarkActive records speech at now (unix ns): the track counts as an active
// speaker until now+hangover. It reports whether the track was inactive
// before, i.e. whether it just started speaking.
func (t *Track) MarkActive(now int64, hangover time.Duration) (started bool) {
	prev := t.activeUntil.Swap(now + int64(hangover))
	return prev <= now
}

// Active reports whether the track is an active speaker at now (unix ns).
func (t *Track) Active(now int64) bool { return t.activeUntil.Load() > now }

// Waiting reports whether the track is active but lacks a slot somewhere.
func (t *Track) Waiting() bool { return t.waiting.Load() }
