package room

import (
	"sync/atomic"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/rtc"
)

// Track is a published up-track as the room sees it: whose it is, whether
// its publisher is speaking, and where the speaker policy sends it. Its
// speaking state and targets are read and written without locks.
type Track struct {
	*rtc.UpTrack

	// member is the membership the track's packets follow: its Beep user's
	// conversation, or its participant's.
	member *atomic.Pointer[Conversation]
	user   *User        // nil for a participant's or a remote track
	part   *Participant // nil for a Beep device's track
	// remoteUser is the publishing user of a track relayed from another
	// router (AddRemoteTrack); "" for a local track.
	remoteUser string

	// activeUntil is when the speaker stops counting as active (unix ns):
	// the last loud packet plus the forwarder's hangover. Zero: never loud.
	activeUntil atomic.Int64
	// waiting is set when the track is active but some device had no slot
	// to give it; the forwarder then asks for reassignment now and then.
	waiting atomic.Bool
	// targets are the down-tracks that receive this track now.
	targets atomic.Pointer[targets]
	// mixed is set while a mix that a device hears includes the track
	// (mixing.go).
	mixed atomic.Bool
}

// targets is an immutable snapshot of the down-tracks bound to a track
// within one conversation.
type targets struct {
	conv  *Conversation
	downs []*rtc.DownTrack
}

// NewTrack returns the room's view of up-track up published by user u, for
// tests and tools that feed a pipeline directly. It takes part in no
// conversation's forwarding.
func NewTrack(u *User, up *rtc.UpTrack) *Track {
	t := &Track{UpTrack: up, user: u}
	if u != nil {
		t.member = &u.conv
	}
	return t
}

// Conversation returns the conversation the track's packets are for now,
// or nil. It is safe to call from the packet path.
func (t *Track) Conversation() *Conversation {
	if t.member == nil {
		return nil
	}
	return t.member.Load()
}

// Video reports whether the track is video.
func (t *Track) Video() bool { return t.Kind == webrtc.RTPCodecTypeVideo }

// User returns the publishing Beep user, or nil for a participant's track.
func (t *Track) User() *User { return t.user }

// Targets returns the down-tracks that receive the track in conversation c.
// The slice is shared and must not be modified.
func (t *Track) Targets(c *Conversation) []*rtc.DownTrack {
	tg := t.targets.Load()
	if tg == nil || tg.conv != c {
		return nil
	}
	return tg.downs
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
