package sylk_test

import (
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/signal/sylk"
)

const (
	aliceAOR = "alice@example.com"
	bobAOR   = "bob@example.com"
)

// dialCall is an outgoing call as sylkrtc.js makes it: session-create with
// a send-receive offer without candidates, trickled after it.
func dialCall(t *testing.T, c *client, from, to, session string, frames []testmedia.Frame) *peer {
	t.Helper()
	p := newPeer(t, frames)
	p.addTracks(webrtc.RTPTransceiverDirectionSendrecv)
	offer := p.offer()
	tx := c.tx()
	c.send(map[string]any{"sylkrtc": "session-create", "transaction": tx, "account": from, "session": session, "uri": to, "sdp": offer})
	p.trickle(c, "session-trickle", session)
	if r := c.reply(tx); r.str("sylkrtc") != "ack" {
		t.Fatalf("session-create: %v", r)
	}
	return p
}

// incoming waits for an incoming-session for aor and checks its fields.
func incoming(t *testing.T, c *client, aor, from string) msg {
	t.Helper()
	m := c.wait(func(m msg) bool {
		return m.str("sylkrtc") == "account-event" && m.str("event") == "incoming-session" && m.str("account") == aor
	}, aor+" incoming-session")
	orig, _ := m["originator"].(map[string]any)
	if orig == nil || orig["uri"] != from || orig["display_name"] == "" {
		t.Errorf("incoming-session originator %v, want uri %s and a display name", m["originator"], from)
	}
	if _, ok := m["headers"]; ok {
		t.Errorf("incoming-session has headers: %v (omit them)", m["headers"])
	}
	if sdp := m.str("sdp"); candidates(sdp) == 0 || strings.Count(sdp, "a=sendrecv") < 2 || m.str("session") == "" {
		t.Errorf("incoming-session: want a session id and a send-receive audio and video offer with the router's candidates; got %v", m)
	}
	return m
}

// answerCall answers an incoming session with a peer sending frames.
func answerCall(t *testing.T, c *client, in msg, frames []testmedia.Frame) *peer {
	t.Helper()
	p := newPeer(t, frames)
	answer := p.answer(in.str("sdp"))
	c.mustAck("session-answer", map[string]any{"session": in.str("session"), "sdp": answer})
	p.trickle(c, "session-trickle", in.str("session"))
	return p
}

// terminated waits for the terminated state of session and returns its
// reason.
func terminated(t *testing.T, c *client, session string) string {
	t.Helper()
	return c.wait(callState(session, "terminated"), session+" terminated").str("reason")
}

// TestCallMediaBothWays: alice calls bob; bob's socket gets the offer,
// answers; alice gets accepted with the answer, both get established, and
// each decodes the other's VP8 and receives the other's Opus, through the
// router. Alice hangs up: bob is told 200 OK.
func TestCallMediaBothWays(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, 3*waitLong)
	e := newEnv(t, nil)
	alice, bob := e.dial(t, sylk.ProtocolV2), e.dial(t, sylk.ProtocolV2)
	alice.login(aliceAOR)
	bob.login(bobAOR)

	caller := dialCall(t, alice, aliceAOR, bobAOR, "call-1", frames)
	in := incoming(t, bob, bobAOR, aliceAOR)
	alice.wait(callState("call-1", "ringing"), "ringing")
	callee := answerCall(t, bob, in, frames)
	accepted := alice.wait(callState("call-1", "accepted"), "the caller's accepted")
	if candidates(accepted.str("sdp")) == 0 {
		t.Fatalf("the caller's accepted has no SDP with candidates: %v", accepted)
	}
	caller.apply(accepted.str("sdp"))
	if m := bob.wait(callState(in.str("session"), "accepted"), "the callee's accepted"); m["sdp"] != nil {
		t.Errorf("the callee's accepted carries an SDP: %v", m)
	}
	alice.wait(callState("call-1", "established"), "the caller's established")
	bob.wait(callState(in.str("session"), "established"), "the callee's established")

	for _, side := range []struct {
		name string
		p    *peer
	}{{"alice←bob", caller}, {"bob←alice", callee}} {
		side.p.untilMedia(ctx, side.name, 60, 50)
		n, errs, mime := side.p.decodeVideo()
		_, audio := side.p.Counts()
		t.Logf("call %s: %d VP8 frames decoded, %d audio packets", side.name, n, audio)
		if !strings.EqualFold(mime, webrtc.MimeTypeVP8) || n < 50 || len(errs) > 0 {
			t.Errorf("call %s: %s, %d frames decoded, want VP8 and ≥ 50; errors %q", side.name, mime, n, errs)
		}
	}
	caller.checkTrickles()
	callee.checkTrickles()

	alice.mustAck("session-terminate", map[string]any{"session": "call-1"})
	if r := terminated(t, bob, in.str("session")); r != "200 OK" {
		t.Errorf("bob: terminated %q, want 200 OK", r)
	}
	if r := terminated(t, alice, "call-1"); r != "200 OK" {
		t.Errorf("alice: terminated %q, want 200 OK", r)
	}
	if st := e.srv.Stats(); st.Calls != 1 || st.CallsAnswered != 1 {
		t.Errorf("stats %+v, want 1 call answered", st)
	}
}

// TestCallOutcomes: how calls end, each side's terminated reason.
func TestCallOutcomes(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	tests := []struct {
		name string
		ring time.Duration
		run  func(t *testing.T, e *env, alice, bob *client)
	}{
		{"callee declines: 486", 0, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, bobAOR, "c", frames)
			in := incoming(t, bob, bobAOR, aliceAOR)
			bob.mustAck("session-terminate", map[string]any{"session": in.str("session")})
			if r := terminated(t, alice, "c"); r != "486 Busy Here" {
				t.Errorf("caller: %q, want 486 Busy Here", r)
			}
		}},
		{"local account not registered: 480", 0, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, "carol@example.com", "c", frames)
			if r := terminated(t, alice, "c"); r != "480 Temporarily Unavailable" {
				t.Errorf("caller: %q, want 480 Temporarily Unavailable", r)
			}
		}},
		{"non-local target: 404 at once", 0, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, "someone@elsewhere.org", "c", frames)
			if r := terminated(t, alice, "c"); r != "404 Not Found" {
				t.Errorf("caller: %q, want 404 Not Found", r)
			}
		}},
		{"nobody answers: 408, missed", 300 * time.Millisecond, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, bobAOR, "c", frames)
			in := incoming(t, bob, bobAOR, aliceAOR)
			if r := terminated(t, alice, "c"); r != "408 Request Timeout" {
				t.Errorf("caller: %q, want 408 Request Timeout", r)
			}
			if r := terminated(t, bob, in.str("session")); r != "487 Request Terminated" {
				t.Errorf("callee: %q, want 487 Request Terminated", r)
			}
			missed(t, bob)
		}},
		{"caller cancels: 487, missed", 0, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, bobAOR, "c", frames)
			in := incoming(t, bob, bobAOR, aliceAOR)
			alice.mustAck("session-terminate", map[string]any{"session": "c"})
			if r := terminated(t, bob, in.str("session")); r != "487 Request Terminated" {
				t.Errorf("callee: %q, want 487 Request Terminated", r)
			}
			missed(t, bob)
			if r := bob.request("session-answer", map[string]any{"session": in.str("session"), "sdp": "v=0\r\n"}); r.str("sylkrtc") != "error" {
				t.Errorf("answer after cancel: %v, want error", r)
			}
		}},
		{"caller's socket drops while ringing: 487", 0, func(t *testing.T, e *env, alice, bob *client) {
			dialCall(t, alice, aliceAOR, bobAOR, "c", frames)
			in := incoming(t, bob, bobAOR, aliceAOR)
			alice.close()
			if r := terminated(t, bob, in.str("session")); r != "487 Request Terminated" {
				t.Errorf("callee: %q, want 487 Request Terminated", r)
			}
		}},
		{"first answer wins", 0, func(t *testing.T, e *env, alice, bob *client) {
			bob2 := e.dial(t, sylk.ProtocolV2)
			bob2.login(bobAOR)
			caller := dialCall(t, alice, aliceAOR, bobAOR, "c", frames)
			in1 := incoming(t, bob, bobAOR, aliceAOR)
			in2 := incoming(t, bob2, bobAOR, aliceAOR)
			callee := answerCall(t, bob2, in2, frames)
			if r := terminated(t, bob, in1.str("session")); r != "200 Call completed elsewhere" {
				t.Errorf("the other socket: %q, want 200 Call completed elsewhere", r)
			}
			if r := bob.request("session-answer", map[string]any{"session": in1.str("session"), "sdp": "v=0\r\n"}); r.str("sylkrtc") != "error" {
				t.Errorf("late answer: %v, want error", r)
			}
			caller.apply(alice.wait(callState("c", "accepted"), "accepted").str("sdp"))
			alice.wait(callState("c", "established"), "established")
			callee.waitConnected(deadline(t, waitLong), "callee")
			// The callee's socket drops: the caller is told.
			bob2.close()
			if r := terminated(t, alice, "c"); r != "200 OK" {
				t.Errorf("caller after the callee's socket dropped: %q, want 200 OK", r)
			}
		}},
		{"busy: too many calls", 0, func(t *testing.T, e *env, alice, bob *client) {
			// MaxCallsPerAccount is 1 here: bob is in a call already.
			dialCall(t, alice, aliceAOR, bobAOR, "c1", frames)
			incoming(t, bob, bobAOR, aliceAOR)
			carol := e.dial(t, sylk.ProtocolV2)
			carol.login("carol@example.com")
			dialCall(t, carol, "carol@example.com", bobAOR, "c2", frames)
			if r := terminated(t, carol, "c2"); r != "486 Busy Here" {
				t.Errorf("second caller: %q, want 486 Busy Here", r)
			}
			p := newPeer(t, frames)
			p.addTracks(webrtc.RTPTransceiverDirectionSendrecv)
			r := alice.request("session-create", map[string]any{"account": aliceAOR, "session": "c3", "uri": "carol@example.com", "sdp": p.offer()})
			if r.str("sylkrtc") != "error" || !strings.Contains(r.str("error"), "too many calls") {
				t.Errorf("a second call of alice: %v, want error too many calls", r)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *sylk.Config) {
				c.RingTimeout = tt.ring
				c.MaxCallsPerAccount = 1
			})
			alice, bob := e.dial(t, sylk.ProtocolV2), e.dial(t, sylk.ProtocolV2)
			alice.login(aliceAOR)
			bob.login(bobAOR)
			tt.run(t, e, alice, bob)
		})
	}
}

// missed waits for a missed-session of bob from alice.
func missed(t *testing.T, bob *client) {
	t.Helper()
	m := bob.wait(func(m msg) bool { return m.str("event") == "missed-session" && m.str("account") == bobAOR }, "missed-session")
	if o, _ := m["originator"].(map[string]any); o == nil || o["uri"] != aliceAOR {
		t.Errorf("missed-session originator %v, want %s", m["originator"], aliceAOR)
	}
}

// TestCloseEndsEverything: Server.Close with a call ringing, a call up and
// a room session closes every socket and returns once their handlers are
// done; new sockets are refused.
func TestCloseEndsEverything(t *testing.T) {
	frames := testmedia.Frames(t, testmedia.VP8(t))
	e := newEnv(t, nil)
	alice, bob, carol := e.dial(t, sylk.ProtocolV2), e.dial(t, sylk.ProtocolV2), e.dial(t, sylk.ProtocolV2)
	alice.login(aliceAOR)
	bob.login(bobAOR)
	carol.login("carol@example.com")
	caller := dialCall(t, alice, aliceAOR, bobAOR, "up", frames)
	answerCall(t, bob, incoming(t, bob, bobAOR, aliceAOR), frames)
	caller.apply(alice.wait(callState("up", "accepted"), "accepted").str("sdp"))
	dialCall(t, carol, "carol@example.com", aliceAOR, "ringing", frames)
	incoming(t, alice, aliceAOR, "carol@example.com")
	join(t, e, "dave@example.com", frames)

	e.srv.Close()
	for _, c := range []*client{alice, bob, carol} {
		if err := c.closedErr(); err == nil {
			t.Error("a socket was not closed")
		}
	}
	if st := e.srv.Stats(); st.Connections != 0 {
		t.Errorf("%d connections after Close", st.Connections)
	}
	if got := e.status(t, []string{"sylkRTC-2"}, nil); got != 503 {
		t.Errorf("a socket after Close: %d, want 503", got)
	}
}
