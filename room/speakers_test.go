package room

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/rtc"
)

// speakerRoom is a conversation of users with one device each, for the
// speaker policy alone: down-tracks without peers, tracks without readers.
type speakerRoom struct {
	c       *Conversation
	users   map[string]*User
	devices map[string]*device
	tracks  map[string]*Track
}

// newSpeakerRoom makes a conversation from a spec such as "a:2 b:1 c:0":
// users a, b and c, whose devices receive on 2, 1 and no slots; every user
// publishes one track, started in the order given.
func newSpeakerRoom(t *testing.T, spec string) *speakerRoom {
	t.Helper()
	r := &speakerRoom{c: newConversation("speakers", nil), users: map[string]*User{}, devices: map[string]*device{}, tracks: map[string]*Track{}}
	t.Cleanup(r.c.stop)
	start := time.Now()
	for i, f := range strings.Fields(spec) {
		name, n, _ := strings.Cut(f, ":")
		u := &User{ID: name, devices: map[string]*device{}}
		u.conv.Store(r.c)
		d := &device{user: u, connected: true}
		for range int(n[0] - '0') {
			d.slots = append(d.slots, new(rtc.DownTrack))
		}
		up := rtc.NewUpTrack(claim.Claim{UserID: name, ClientID: name + "-phone"}, uint32(i+1), 1)
		up.Started = start.Add(time.Duration(i) * time.Millisecond)
		tr := NewTrack(u, up)
		r.users[name], r.devices[name], r.tracks[name] = u, d, tr
		r.c.members[u] = struct{}{}
		r.c.devices = append(r.c.devices, d)
		r.c.tracks = append(r.c.tracks, tr)
	}
	return r
}

// reassign runs the policy at now.
func (r *speakerRoom) reassign(now int64) {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	r.c.reassignLocked(now)
}

// heard returns whom user's slots carry, in slot order ("-" for none).
func (r *speakerRoom) heard(user string) string {
	var who []string
	for _, s := range r.devices[user].slots {
		name := "-"
		for n, tr := range r.tracks {
			if s.Source() == tr.UpTrack {
				name = n
			}
		}
		who = append(who, name)
	}
	return strings.Join(who, " ")
}

// TestSpeakerPolicy checks the rules of reassignLocked, one per case: who
// each device hears after the speakers named in active have spoken (the
// last one most recently), and who is left waiting for a slot.
func TestSpeakerPolicy(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		before  []string // active (in this order) at a first reassignment
		active  []string // active (in this order) at the second
		want    map[string]string
		waiting []string
	}{
		{
			name: "never one's own voice",
			spec: "a:2 b:2",
			want: map[string]string{"a": "b -", "b": "a -"},
		},
		{
			name: "quiet conversation still flows, oldest first",
			spec: "a:1 b:2 c:1 d:1",
			want: map[string]string{"a": "b", "b": "a c", "c": "a", "d": "a"},
		},
		{
			name:   "an active speaker takes the slot of the quietest",
			spec:   "a:1 b:1 c:1",
			active: []string{"c"},
			want:   map[string]string{"a": "c", "b": "c", "c": "a"},
		},
		{
			name:    "most recent speakers fill the slots",
			spec:    "a:2 b:1 c:1 d:1",
			active:  []string{"b", "c"},
			want:    map[string]string{"a": "b c", "b": "c", "c": "b", "d": "c"},
			waiting: []string{"b"}, // d has one slot for two speakers
		},
		{
			name:    "an active speaker keeps its slot: the newcomer waits",
			spec:    "a:1 b:1 c:1",
			before:  []string{"b"},
			active:  []string{"b", "c"},
			want:    map[string]string{"a": "b", "b": "c", "c": "b"},
			waiting: []string{"c"},
		},
		{
			name:   "a listener without slots hears nobody and holds nobody back",
			spec:   "a:0 b:1",
			active: []string{"a"},
			want:   map[string]string{"a": "", "b": "a"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newSpeakerRoom(t, tt.spec)
			now := time.Now().UnixNano()
			speak := func(names []string) {
				for _, n := range names {
					now += int64(time.Millisecond)
					r.tracks[n].MarkActive(now, time.Second)
				}
				r.reassign(now)
			}
			speak(tt.before)
			speak(tt.active)
			for user, want := range tt.want {
				if got := r.heard(user); got != want {
					t.Errorf("%s hears %q, want %q", user, got, want)
				}
			}
			for n, tr := range r.tracks {
				want := false
				for _, w := range tt.waiting {
					want = want || w == n
				}
				if tr.Waiting() != want {
					t.Errorf("%s waiting: %v, want %v", n, tr.Waiting(), want)
				}
			}
			// Each track's targets are exactly the slots that carry it.
			for n, tr := range r.tracks {
				var want int
				for _, d := range r.devices {
					for _, s := range d.slots {
						if s.Source() == tr.UpTrack {
							want++
						}
					}
				}
				if got := len(tr.Targets(r.c)); got != want {
					t.Errorf("%s has %d targets, %d slots carry it", n, got, want)
				}
			}
		})
	}
}

// TestSpeakerHandover: once the speaker holding a slot falls quiet, a
// waiting speaker gets it at the next reassignment.
func TestSpeakerHandover(t *testing.T) {
	r := newSpeakerRoom(t, "a:1 b:1 c:1")
	now := time.Now().UnixNano()
	r.tracks["b"].MarkActive(now, time.Second)
	r.tracks["c"].MarkActive(now+1, time.Second)
	r.reassign(now + 1)
	if got := r.heard("a"); got != "c" {
		t.Fatalf("a hears %q, want c (the most recent)", got)
	}
	r.tracks["b"].MarkActive(now+2, time.Second) // b speaks on, c falls quiet
	later := now + int64(1500*time.Millisecond)
	r.tracks["b"].MarkActive(later, time.Second)
	r.reassign(later)
	if got := r.heard("a"); got != "b" {
		t.Fatalf("a hears %q after c fell quiet, want b", got)
	}
}

// TestReassignRunsOffThePacketPath: Reassign only asks; the conversation's
// own goroutine recomputes, and a removed device's slots are unbound at
// once, before any reassignment.
func TestReassignRunsOffThePacketPath(t *testing.T) {
	r := newSpeakerRoom(t, "a:1 b:1")
	r.c.Reassign()
	testutil.Eventually(t, 5*time.Second, "the conversation's goroutine to assign the slots", func() bool {
		r.c.mu.Lock()
		defer r.c.mu.Unlock()
		return r.heard("a") == "b" && r.heard("b") == "a"
	})
	for range 1000 {
		r.c.Reassign() // never blocks, however often
	}
	r.c.removeDevice(r.devices["a"])
	if got := r.heard("a"); got != "-" {
		t.Errorf("a removed device still hears %q", got)
	}
}

// BenchmarkReassign measures one recomputation of the speaker policy for a
// large conversation: 200 devices with 16 slots each and 20 speakers, one
// of them just started. It runs on the conversation's own goroutine, never
// under Manager.mu or on the packet path.
func BenchmarkReassign(b *testing.B) {
	c := newConversation("bench", nil)
	b.Cleanup(c.stop)
	now := time.Now().UnixNano()
	for i := range 200 {
		u := &User{ID: "u" + strconv.Itoa(i), devices: map[string]*device{}}
		u.conv.Store(c)
		d := &device{user: u, connected: true}
		for range 16 {
			d.slots = append(d.slots, new(rtc.DownTrack))
		}
		c.members[u] = struct{}{}
		c.devices = append(c.devices, d)
		if i < 20 {
			tr := NewTrack(u, rtc.NewUpTrack(claim.Claim{UserID: u.ID, ClientID: "d"}, uint32(i+1), 1))
			c.tracks = append(c.tracks, tr)
		}
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		now += int64(time.Millisecond)
		c.tracks[i%20].MarkActive(now, time.Second)
		c.mu.Lock()
		c.reassignLocked(now)
		c.mu.Unlock()
	}
}
