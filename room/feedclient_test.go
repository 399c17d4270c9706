package room_test

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// TestMain is the one TestMain of the package's test binary (package room
// and room_test together): it fails the run if a goroutine (a peer, a track
// reader, a client) outlives the tests, and removes the media fixtures.
func TestMain(m *testing.M) { testpeer.VerifyTestMain(m) }

// waitLong bounds every wait of the feed tests: generous, for -race on a
// busy machine of two cores.
const waitLong = 20 * time.Second

// deadline returns a context that ends after d or with the test.
func deadline(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newManager starts a Manager on the real default forwarding pipeline
// (permission gate, forwarder), with ICE on 127.0.0.1 only. Its log is
// shown if the test fails. Cleanup closes the Manager, then the pipeline.
func newManager(t *testing.T, media rtc.Config) *room.Manager {
	t.Helper()
	return testroom.NewManager(t, media, testutil.Logger(t, slog.LevelInfo))
}

// member is a participant with the events its watch got.
type member struct {
	*room.Participant
	events chan room.Event
}

// enter makes participant id of conversation conv. It leaves in the test's
// cleanup, before the Manager closes.
func enter(t *testing.T, m *room.Manager, conv, id string) *member {
	t.Helper()
	events := make(chan room.Event, 64)
	p, err := m.Enter(conv, room.Identity{ID: id, Claim: claim.Claim{UserID: id, ClientID: id + "-1"}}, func(e room.Event) {
		select {
		case events <- e: // the watch must not block
		default:
		}
	})
	if err != nil {
		t.Fatalf("enter %s: %v", id, err)
	}
	t.Cleanup(p.Leave)
	return &member{Participant: p, events: events}
}

// waitEvent waits for the event kind about participant of, skipping others.
func (mb *member) waitEvent(ctx context.Context, kind room.EventKind, of *room.Participant) bool {
	for {
		select {
		case e := <-mb.events:
			if e.Kind == kind && e.Participant == of {
				return true
			}
		case <-ctx.Done():
			return false
		}
	}
}

// publish connects a publisher client for participant p, sending frames
// (of codec mime) and silent Opus on sendonly m-lines, video first, and
// starts sending once both ends are connected. Cleanup closes it.
func publish(t *testing.T, ctx context.Context, p *room.Participant, mime string, frames []testmedia.Frame) *testpeer.Peer {
	t.Helper()
	c, offerSDP := offerMedia(t, ctx, "pub-"+p.ID, mime, frames)
	peer, err := p.Publisher()
	if err != nil {
		t.Fatalf("publisher %s: %v", p.ID, err)
	}
	if _, err := peer.Answer(offerSDP); err != nil {
		t.Fatalf("publisher %s: answer: %v", p.ID, err)
	}
	answer := peer.WaitGathered(ctx)
	if err := c.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatalf("publisher %s: apply answer: %v", p.ID, err)
	}
	for _, ch := range []<-chan struct{}{c.Connected(), peer.Connected()} {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("publisher %s: not connected", p.ID)
		}
	}
	c.Media.Start(nil)
	return c
}

// offerMedia opens a publisher client of stream, frames (of codec mime)
// and silent Opus on sendonly m-lines, video first, and returns it with
// its offer, candidates gathered. It sends nothing until its Media starts.
// Cleanup closes it.
func offerMedia(t *testing.T, ctx context.Context, stream, mime string, frames []testmedia.Frame) (*testpeer.Peer, string) {
	t.Helper()
	c := testpeer.OpenMedia(t, testpeer.MediaConfig{VideoMime: mime, Frames: frames, StreamID: stream})
	if err := c.AddTracks(webrtc.RTPTransceiverDirectionSendonly); err != nil {
		t.Fatal(err)
	}
	offer, err := c.PC.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	offerSDP, err := testpeer.Gather(ctx, c.PC, offer)
	if err != nil {
		t.Fatalf("publisher %s: gather: %v", stream, err)
	}
	return c, offerSDP
}

// subOptions rewrite the signalling of a subscriber (to route it through a
// relay).
type subOptions struct {
	offerFilter, answerFilter func(sdp string) string
}

// subscribe connects a subscriber client to feed f: the router offers, the
// client answers. It does not wait for the connection. Cleanup closes it.
func subscribe(t *testing.T, ctx context.Context, f *room.Feed, o subOptions) *testpeer.Peer {
	t.Helper()
	s := testpeer.Open(t, testpeer.Options{})
	offer, err := f.Peer().Offer(ctx)
	if err != nil {
		t.Fatalf("feed offer: %v", err)
	}
	if o.offerFilter != nil {
		offer = o.offerFilter(offer)
	}
	if err := s.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		t.Fatalf("subscriber: apply the feed's offer: %v", err)
	}
	answer, err := s.PC.CreateAnswer(nil)
	if err != nil {
		t.Fatal(err)
	}
	answerSDP, err := testpeer.Gather(ctx, s.PC, answer)
	if err != nil {
		t.Fatalf("subscriber: gather: %v", err)
	}
	if o.answerFilter != nil {
		answerSDP = o.answerFilter(answerSDP)
	}
	if err := f.Peer().SetAnswer(answerSDP); err != nil {
		t.Fatalf("feed answer: %v", err)
	}
	return s
}

// viaRelay returns the signalling rewrites that make a subscriber reach the
// router (on its one UDP port) through relay only: the router's candidate
// names the relay's port, and the client's answer carries no candidate, so
// that the router learns the client only as the relay's address (a
// peer-reflexive candidate) and sends it nothing directly.
func viaRelay(routerPort int, relay *testutil.Relay) subOptions {
	return subOptions{
		offerFilter: func(sdp string) string {
			return strings.ReplaceAll(sdp, " "+strconv.Itoa(routerPort)+" typ host", " "+strconv.Itoa(relay.Port())+" typ host")
		},
		answerFilter: func(sdp string) string {
			var out []string
			for _, l := range strings.SplitAfter(sdp, "\n") {
				if !strings.HasPrefix(l, "a=candidate:") {
					out = append(out, l)
				}
			}
			return strings.Join(out, "")
		},
	}
}
