package room

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
)

// fakeMixing records what the policy asks of a mixing stage: the rules
// alone, without codecs (the stage's own tests run real ones).
type fakeMixing struct {
	mode             MixMode
	started, stopped int
	mixes            []*Mix
}

func (f *fakeMixing) MixMode() MixMode { return f.mode }
func (f *fakeMixing) StartMixing(*Conversation) MixSession {
	f.started++
	return f
}
func (f *fakeMixing) SetMixes(m []*Mix) { f.mixes = m }
func (f *fakeMixing) Stop()             { f.stopped++; f.mixes = nil }

// heardMixed is speakerRoom.heard, with a slot carrying a mix shown as
// mix(names it leaves out).
func (r *speakerRoom) heardMixed(user string) string {
	var who []string
	for _, s := range r.devices[user].slots {
		name := "-"
		for n, tr := range r.tracks {
			if s.Source() == tr.UpTrack {
				name = n
			}
		}
		for _, x := range r.c.mixes {
			if s.Source() == x.UpTrack() {
				var out []string
				for _, id := range x.Without {
					for n, tr := range r.tracks {
						if tr.ID == id {
							out = append(out, n)
						}
					}
				}
				slices.Sort(out)
				name = "mix(" + strings.Join(out, ",") + ")"
			}
		}
		who = append(who, name)
	}
	return strings.Join(who, " ")
}

// TestMixingPolicy checks the mixing rules: who each device hears, which
// distinct mixes are encoded, and which tracks are mixed, after the
// speakers of active have spoken (the last most recently).
func TestMixingPolicy(t *testing.T) {
	tests := []struct {
		name   string
		mode   MixMode
		spec   string
		active []string
		want   map[string]string
		mixes  int      // distinct mixes; 0: no session at all
		mixed  []string // tracks pushed to the mixer
	}{
		{
			name:   "one slot, three speakers: each hears the others mixed, a listener all",
			mode:   MixOverflow,
			spec:   "a:1 b:1 c:1 d:1 e:1",
			active: []string{"a", "b", "c"},
			want:   map[string]string{"a": "mix(a)", "b": "mix(b)", "c": "mix(c)", "d": "mix()", "e": "mix()"},
			mixes:  4, // listeners share one: the cost follows speakers, not listeners
			mixed:  []string{"a", "b", "c"},
		},
		{
			name:   "enough slots: plain forwarding, no session",
			mode:   MixOverflow,
			spec:   "a:2 b:2 c:2",
			active: []string{"a", "b"},
			want:   map[string]string{"a": "b c", "b": "a c", "c": "a b"},
		},
		{
			name:   "two slots, three speakers: the first keeps its slot, the others mixed on the last",
			mode:   MixOverflow,
			spec:   "a:2 b:2 c:2 d:2",
			active: []string{"a", "b", "c"},
			want:   map[string]string{"a": "b c", "b": "a c", "c": "a b", "d": "a mix(a)"},
			mixes:  1,
			mixed:  []string{"b", "c"},
		},
		{
			name:   "always: one mix on the first slot, for every device",
			mode:   MixAlways,
			spec:   "a:2 b:1 c:1",
			active: []string{"b"},
			want:   map[string]string{"a": "mix() -", "b": "mix(b)", "c": "mix()"},
			mixes:  2,
			mixed:  []string{"b"},
		},
		{
			name:   "mode off: forwarding only",
			mode:   MixOff,
			spec:   "a:1 b:1 c:1 d:1",
			active: []string{"a", "b", "c"},
			want:   map[string]string{"d": "a"}, // the first keeps the slot
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newSpeakerRoom(t, tt.spec)
			f := &fakeMixing{mode: tt.mode}
			r.c.mu.Lock()
			r.c.mixing = f
			r.c.mu.Unlock()
			now := time.Now().UnixNano()
			for _, n := range tt.active {
				now += int64(time.Millisecond)
				r.tracks[n].MarkActive(now, time.Second)
				// Reassigned as each starts: slots switch from
				// forwarding to a mix as the speakers come, and a
				// track's targets, which the forwarder writes to,
				// never include a slot that now carries a mix.
				r.reassign(now)
				for n, tr := range r.tracks {
					for _, s := range tr.Targets(r.c) {
						if s.Source() != tr.UpTrack {
							t.Errorf("%s targets a slot carrying something else", n)
						}
					}
				}
			}
			r.reassign(now)
			for user, want := range tt.want {
				if got := r.heardMixed(user); got != want {
					t.Errorf("%s hears %q, want %q", user, got, want)
				}
			}
			if got := len(f.mixes); got != tt.mixes || (tt.mixes == 0) != (f.started == 0) {
				t.Errorf("%d mixes set, session started %d times; want %d mixes", got, f.started, tt.mixes)
			}
			for n, tr := range r.tracks {
				if want := slices.Contains(tt.mixed, n); tr.Mixed() != want {
					t.Errorf("%s mixed: %v, want %v", n, tr.Mixed(), want)
				}
				if tr.Waiting() && tt.mode != MixOff {
					t.Errorf("%s waits for a slot, but is heard in a mix", n)
				}
			}
			// The mix slots are the mixes' targets, and no track's.
			for _, x := range r.c.mixes {
				for _, s := range x.Targets() {
					if s.Source() != x.UpTrack() {
						t.Errorf("mix %q targets a slot carrying something else", x.Key)
					}
				}
			}

			// Once the speakers' hangover is over, the mixes end (in
			// mode always, the mix stays, of nobody).
			later := now + int64(2*time.Second)
			r.reassign(later)
			if tt.mode == MixAlways {
				if len(f.mixes) != tt.mixes-1 || r.tracks["b"].Mixed() {
					t.Errorf("always, after the hangover: %d mixes, b mixed %v; want the shared mix alone, nobody mixed", len(f.mixes), r.tracks["b"].Mixed())
				}
				return
			}
			if f.stopped != f.started || r.c.MixSession() != nil || len(f.mixes) != 0 {
				t.Errorf("after the hangover: session started %d, stopped %d times, %d mixes", f.started, f.stopped, len(f.mixes))
			}
			for user := range tt.want {
				if got := r.heardMixed(user); strings.Contains(got, "mix") {
					t.Errorf("%s still hears %q after the hangover", user, got)
				}
			}
		})
	}
}

// TestMixingEndsWithSpeakers: the conversation's goroutine runs the policy
// again when an active speaker turns inactive, without any packet or
// membership change asking, so that a mix ends after the hangover.
func TestMixingEndsWithSpeakers(t *testing.T) {
	r := newSpeakerRoom(t, "a:1 b:1 c:1")
	f := &fakeMixing{mode: MixOverflow}
	r.c.mu.Lock()
	r.c.mixing = f
	r.c.mu.Unlock()
	now := time.Now().UnixNano()
	r.tracks["a"].MarkActive(now, 300*time.Millisecond)
	r.tracks["b"].MarkActive(now, 300*time.Millisecond)
	r.c.sync()
	r.c.mu.Lock()
	started := f.started
	r.c.mu.Unlock()
	if started != 1 {
		t.Fatalf("session started %d times with two speakers for c's one slot, want 1", started)
	}
	testutil.Eventually(t, 10*time.Second, "the session to stop after the speakers' hangover", func() bool {
		r.c.mu.Lock()
		defer r.c.mu.Unlock()
		return f.stopped == 1
	})
}
