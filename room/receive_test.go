package room_test

import (
	"errors"
	"testing"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// TestReceive: a participant receives another of its own conversation,
// never itself, one of another conversation, or one that left. (Its media
// path, a 1:1 call both ways, is tested by signal/sylk's
// TestCallMediaBothWays.)
func TestReceive(t *testing.T) {
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "a")
	b := enter(t, m, "conv-1", "b")
	x := enter(t, m, "conv-2", "x")
	gone := enter(t, m, "conv-1", "gone")
	gone.Leave()
	tests := []struct {
		name    string
		p, from *room.Participant
		ok      bool
		is      error
	}{
		{"same conversation", a.Participant, b.Participant, true, nil},
		{"the other way", b.Participant, a.Participant, true, nil},
		{"itself", a.Participant, a.Participant, false, nil},
		{"another conversation", a.Participant, x.Participant, false, nil},
		{"one that left", a.Participant, gone.Participant, false, room.ErrLeft},
		{"nobody", a.Participant, nil, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Receive(tt.from)
			if (err == nil) != tt.ok || tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("Receive: %v, want ok %v (%v)", err, tt.ok, tt.is)
			}
		})
	}
}

// TestPublishing: a participant publishes from its first track on, and
// no longer once it left.
func TestPublishing(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, waitLong)
	m := newManager(t, rtc.Config{})
	a := enter(t, m, "conv-1", "a")
	if a.Publishing() {
		t.Fatal("publishing before any track")
	}
	publish(t, ctx, a.Participant, webrtc.MimeTypeVP8, frames)
	testutil.Eventually(t, waitLong, "a publishing", a.Publishing)
	a.Leave()
	if a.Publishing() {
		t.Error("publishing after leaving")
	}
}
