package room

import (
	"slices"

	"github.com/beepvoice/router/rtc"
)

// The speaker policy: Beep's devices receive a conversation's speakers on
// "slots", one down-track per receiving audio m-line of their offer, and
// the policy decides who is heard on which slot.

// reassignLocked assigns speakers to slots, binds the feeds (feed.go), and
// publishes, on every track, the down-tracks that now carry it. Rules, per receiving device:
//   - a device never receives its own user's tracks;
//   - an assigned speaker keeps its slot while it is active, or while no
//     active speaker lacks a slot (no flapping between speakers);
//   - an active speaker without a slot takes a free slot, else the slot of
//     the assigned speaker that has been inactive longest;
//   - free slots left over take inactive speakers, most recent first, so
//     that a quiet conversation still flows;
//   - with a mixing stage (Config.Mixing, mixing.go), a device with fewer
//     slots than the active speakers it would hear gets the ones that do
//     not fit mixed on its last slot (mode always: one mix on its first).
//
// Speakers are ranked by how recently they spoke, then by age. Callers
// hold c.mu.
func (c *Conversation) reassignLocked(now int64) {
	c.lastReassign.Store(now)
	ranked := slices.DeleteFunc(slices.Clone(c.tracks), (*Track).Video) // speakers are audio
	slices.SortStableFunc(ranked, func(a, b *Track) int {
		if d := b.activeUntil.Load() - a.activeUntil.Load(); d != 0 {
			if d > 0 {
				return 1
			}
			return -1
		}
		return a.Started.Compare(b.Started)
	})
	byUp := make(map[*rtc.UpTrack]*Track, len(ranked))
	for _, t := range ranked {
		byUp[t.UpTrack] = t
		t.waiting.Store(false)
	}
	assigned := make(map[*Track][]*rtc.DownTrack, len(c.tracks))
	mode := MixOff
	if c.mixing != nil {
		mode = c.mixing.MixMode()
	}
	var plan mixPlan
	for _, d := range c.devices {
		if !c.mixDevice(d, mode, ranked, byUp, now, &plan) {
			assign(d, d.slots, ranked, byUp, now, false)
		}
		for _, s := range d.slots {
			if t := byUp[s.Source()]; t != nil {
				assigned[t] = append(assigned[t], s)
			}
		}
	}
	if mode != MixOff {
		c.applyMixes(&plan, ranked, now)
		c.expiry = nextExpiry(ranked, now)
	}
	c.bindFeeds(assigned)
	c.bindReceivers(assigned)
	for _, t := range c.tracks {
		if downs := assigned[t]; len(downs) > 0 {
			t.targets.Store(&targets{conv: c, downs: downs})
		} else {
			t.targets.Store(nil)
		}
	}
}

// assign fills slots, d's slots that carry speakers, from ranked,
// following the rules of reassignLocked. byUp maps the conversation's
// up-tracks to its tracks. With mixed, d hears the speakers that find no
// slot in a mix: they are not waiting for one.
func assign(d *device, slots []*rtc.DownTrack, ranked []*Track, byUp map[*rtc.UpTrack]*Track, now int64, mixed bool) {
	owns := func(t *Track) bool {
		for _, s := range slots {
			if s.Source() == t.UpTrack {
				return true
			}
		}
		return false
	}
	for _, s := range slots {
		if up := s.Source(); up != nil {
			if t := byUp[up]; t == nil || t.ownedBy(d.user) {
				s.SetSource(nil)
			}
		}
	}
	for _, t := range ranked {
		if t.ownedBy(d.user) || owns(t) {
			continue
		}
		active := t.Active(now)
		var slot *rtc.DownTrack
		for _, s := range slots {
			if s.Source() == nil {
				slot = s
				break
			}
		}
		if slot == nil && active {
			// Take the slot of the speaker that has been quiet longest.
			var quietest int64
			for _, s := range slots {
				o := byUp[s.Source()]
				if until := o.activeUntil.Load(); until <= now && (slot == nil || until < quietest) {
					slot, quietest = s, until
				}
			}
		}
		if slot == nil {
			if active {
				if !mixed {
					t.waiting.Store(true)
				}
				continue
			}
			return // the rest are inactive too: nothing more to place
		}
		slot.SetSource(t.UpTrack)
	}
}
