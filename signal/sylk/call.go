package sylk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// A 1:1 call is a conversation of its own, "sylk-call:<call id>" (the key
// of its bites), of two participants whose one connection each both
// publishes and receives the other (room.Participant.Receive). The caller
// offers (session-create) and the router answers its connection once the
// callee has answered; each registered socket of the callee gets an offer
// of its own (incoming-session) on a leg the router offers, with send-
// receive m-lines (rtc.Peer.AddSendRecvTrack); the first answer wins and
// the other legs end. A SIP leg can take a leg's place later: the call
// only needs a participant that publishes and receives.

// callConvPrefix starts the conversation id of a call.
const callConvPrefix = "sylk-call:"

// maxQueuedCandidates bounds the caller's candidates kept while its
// connection does not exist yet (the callee has not answered).
const maxQueuedCandidates = 32

// Reasons of terminated events, as SIP status lines.
const (
	reasonOK          = "200 OK"
	reasonElsewhere   = "200 Call completed elsewhere"
	reasonNotFound    = "404 Not Found"
	reasonTimeout     = "408 Request Timeout"
	reasonUnavailable = "480 Temporarily Unavailable"
	reasonBusy        = "486 Busy Here"
	reasonCancelled   = "487 Request Terminated"
	reasonNotAccept   = "488 Not Acceptable Here"
	reasonServerError = "500 Internal Server Error"
	reasonMedia       = "500 Media Connection Failed"
	reasonOverloaded  = "503 Service Unavailable"
)

// callState is where a call is.
type callState int

const (
	ringing callState = iota
	answered
	ended
)

// call is one 1:1 call.
type call struct {
	s        *Server
	id, conv string
	caller   *callSide
	target   string // the callee's account
	offer    string // the caller's
	video    bool   // the caller offered video

	mu          sync.Mutex
	state       callState
	legs        []*callSide // ringing
	callee      *callSide   // the leg that answered
	timer       *time.Timer
	calleeTaken bool // a call of target is counted (Server.takeCall)
}

// callSide is one side of a call on one socket: the caller, or one leg
// ringing on one of the callee's sockets.
type callSide struct {
	call     *call
	c        *conn
	session  string // the session id on c
	account  string
	display  string
	isCaller bool
	part     *room.Participant

	// Guarded by call.mu.
	peer  *rtc.Peer                 // the caller's: nil until answered
	cands []webrtc.ICECandidateInit // the caller's, until peer
}

// offerMedia checks the caller's offer: SDP with an audio m-line; it
// reports whether it offers video.
func offerMedia(text string) (video bool, err error) {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(text); err != nil {
		return false, errors.New("sdp is not a valid SDP description")
	}
	audio := false
	for _, m := range d.MediaDescriptions {
		if m.MediaName.Port.Value == 0 {
			continue
		}
		switch m.MediaName.Media {
		case "audio":
			audio = true
		case "video":
			video = true
		}
	}
	if !audio {
		return false, errors.New("sdp offers no audio")
	}
	return video, nil
}

// stateEvent is a session-event state message.
func stateEvent(session, state string) message {
	return message{"sylkrtc": "session-event", "session": session, "event": "state", "state": state}
}

func (c *conn) callCreate(r *Request) {
	s := c.s
	acc, err := c.authenticated(normalizeAOR(r.Account))
	if err != nil {
		c.fail(r.Transaction, err.Error())
		return
	}
	if c.hasSession(r.Session) {
		c.fail(r.Transaction, "session id in use")
		return
	}
	video, err := offerMedia(r.SDP)
	if err != nil {
		c.fail(r.Transaction, "invalid session-create: "+err.Error())
		return
	}
	if !s.takeCall(acc.aor) {
		c.fail(r.Transaction, fmt.Sprintf("too many calls for this account (%d)", s.cfg.MaxCallsPerAccount))
		return
	}
	cl := &call{s: s, id: newID(), target: normalizeAOR(r.URI), offer: r.SDP, video: video}
	cl.conv = callConvPrefix + cl.id
	caller := &callSide{call: cl, c: c, session: r.Session, account: acc.aor, display: acc.displayName, isCaller: true}
	cl.caller = caller
	if !c.addSession(r.Session, caller) {
		s.releaseCall(acc.aor)
		c.fail(r.Transaction, "session id in use")
		return
	}
	c.ack(r.Transaction)
	s.count.calls.Add(1)
	log := c.log.With("call", cl.id, "caller", acc.aor, "callee", cl.target)

	part, err := s.cfg.Rooms.Enter(cl.conv, room.Identity{ID: "caller", Claim: claim.Claim{UserID: acc.aor, ClientID: c.id}}, nil)
	if err != nil {
		log.Warn("sylk call refused", "err", err)
		cl.end(reasonFor(err), "", false)
		return
	}
	caller.part = part

	var targets []*conn
	for _, tc := range s.registered(cl.target) {
		if tc != c {
			targets = append(targets, tc)
		}
	}
	if len(targets) == 0 {
		reason := reasonNotFound
		if s.local(cl.target) {
			reason = reasonUnavailable
		}
		log.Info("sylk call: callee not reachable", "reason", reason)
		cl.end(reason, "", false)
		return
	}
	if !s.takeCall(cl.target) {
		log.Info("sylk call: callee busy (too many calls)")
		cl.end(reasonBusy, "", false)
		return
	}
	cl.mu.Lock()
	cl.calleeTaken = true
	cl.mu.Unlock()
	for i, tc := range targets {
		if err := cl.ring(tc, i); err != nil {
			log.Warn("sylk call: a leg could not ring", "err", err)
		}
	}
	cl.mu.Lock()
	if cl.state != ringing { // answered, or ended, meanwhile
		cl.mu.Unlock()
		return
	}
	if len(cl.legs) == 0 {
		cl.mu.Unlock()
		cl.end(reasonUnavailable, "", false)
		return
	}
	cl.timer = time.AfterFunc(s.cfg.RingTimeout, cl.timeout)
	c.send(stateEvent(caller.session, "ringing"))
	cl.mu.Unlock()
	log.Info("sylk call ringing", "legs", len(targets))
}

// reasonFor is the terminated reason of a call that failed with err.
func reasonFor(err error) string {
	if errors.Is(err, room.ErrLimit) {
		return reasonOverloaded
	}
	return reasonServerError
}

// ring offers the call to the callee's socket tc: a leg with a connection
// of its own, offered with send-receive m-lines.
func (cl *call) ring(tc *conn, i int) (err error) {
	s := cl.s
	leg := &callSide{call: cl, c: tc, session: newID(), account: cl.target}
	part, err := s.cfg.Rooms.Enter(cl.conv, room.Identity{ID: "callee-" + strconv.Itoa(i), Claim: claim.Claim{UserID: cl.target, ClientID: tc.id}}, nil)
	if err != nil {
		return fmt.Errorf("enter: %w", err)
	}
	defer func() {
		if err != nil {
			part.Leave()
		}
	}()
	leg.part = part
	peer, err := part.Publisher()
	if err != nil {
		return fmt.Errorf("connection: %w", err)
	}
	kinds := []webrtc.RTPCodecType{webrtc.RTPCodecTypeAudio}
	if cl.video {
		kinds = append(kinds, webrtc.RTPCodecTypeVideo)
	}
	for _, k := range kinds {
		if _, err := peer.AddSendRecvTrack(k); err != nil {
			return err
		}
	}
	// The connection waits for a person: its connect timeout starts
	// again once the callee answers.
	peer.ResetConnectTimeout(s.cfg.RingTimeout + s.cfg.GatherTimeout + 10*time.Second)
	if err := part.Receive(cl.caller.part); err != nil {
		return fmt.Errorf("receive the caller: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.GatherTimeout)
	offer, err := peer.Offer(ctx)
	cancel()
	if err != nil {
		return fmt.Errorf("offer: %w", err)
	}
	leg.peer = peer
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if cl.state != ringing {
		return errors.New("the call was answered or ended meanwhile")
	}
	if !tc.addSession(leg.session, leg) {
		return errors.New("the callee's socket closed")
	}
	cl.legs = append(cl.legs, leg)
	tc.send(message{
		"sylkrtc": "account-event", "account": cl.target, "event": "incoming-session",
		"session": leg.session, "originator": originator(cl.caller), "sdp": offer, "call_id": cl.id,
	})
	return nil
}

// originator describes the caller in incoming-session and missed-session.
func originator(caller *callSide) message {
	return message{"uri": caller.account, "display_name": caller.display}
}

func (c *conn) callSession(r *Request) *callSide {
	sd, _ := c.session(r.Session).(*callSide)
	if sd == nil {
		c.fail(r.Transaction, "no such session")
	}
	return sd
}

func (c *conn) callAnswer(r *Request) {
	leg := c.callSession(r)
	if leg == nil {
		return
	}
	if leg.isCaller {
		c.fail(r.Transaction, "session-answer is for incoming sessions")
		return
	}
	cl := leg.call
	cl.mu.Lock()
	if cl.state != ringing || !slices.Contains(cl.legs, leg) {
		cl.mu.Unlock()
		c.fail(r.Transaction, "the session is no longer ringing")
		return
	}
	cl.state = answered
	cl.callee = leg
	losers := slices.DeleteFunc(cl.legs, func(l *callSide) bool { return l == leg })
	cl.legs = nil
	if cl.timer != nil {
		cl.timer.Stop()
	}
	cl.mu.Unlock()
	for _, l := range losers {
		l.finish(reasonElsewhere, false)
	}
	log := c.log.With("call", cl.id)

	if err := leg.peer.SetAnswer(r.SDP); err != nil {
		c.fail(r.Transaction, "invalid session-answer: "+err.Error())
		cl.end(reasonNotAccept, reasonNotAccept, false)
		return
	}
	leg.peer.ResetConnectTimeout(0)

	peer, err := cl.caller.part.Publisher()
	if err == nil {
		_, err = peer.Answer(cl.offer)
	}
	if err != nil {
		log.Info("sylk call: the caller's offer cannot be answered", "err", err)
		reason := reasonNotAccept
		if !errors.Is(err, rtc.ErrBadOffer) {
			reason = reasonServerError
		}
		c.fail(r.Transaction, "the call failed: "+reason)
		cl.end(reason, reason, false)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.s.cfg.GatherTimeout)
	answer := peer.WaitGathered(ctx)
	cancel()
	if err := cl.caller.part.Receive(leg.part); err != nil {
		c.fail(r.Transaction, "the call ended")
		cl.end(reasonOK, reasonOK, false)
		return
	}

	cl.mu.Lock()
	if cl.state != answered {
		cl.mu.Unlock()
		c.fail(r.Transaction, "the call ended")
		return
	}
	caller := cl.caller
	caller.peer = peer
	cands := caller.cands
	caller.cands = nil
	caller.c.send(message{"sylkrtc": "session-event", "session": caller.session, "event": "state", "state": "accepted", "sdp": answer})
	c.send(stateEvent(leg.session, "accepted"))
	cl.mu.Unlock()
	for _, ci := range cands {
		_ = peer.AddCandidate(ci) // refusals are counted by the media core
	}
	c.ack(r.Transaction)
	c.s.count.answered.Add(1)
	log.Info("sylk call answered", "callee_conn", c.id)
	for _, sd := range []*callSide{caller, leg} {
		p := peer
		if sd == leg {
			p = leg.peer
		}
		sd.c.goroutine(func() { sd.watch(p) })
	}
}

// watch tells the side established once its connection is up, and ends
// the call if the connection fails.
func (sd *callSide) watch(p *rtc.Peer) {
	cl := sd.call
	select {
	case <-p.Connected():
		cl.mu.Lock()
		if cl.state == answered {
			sd.c.send(stateEvent(sd.session, "established"))
		}
		cl.mu.Unlock()
	case <-p.Done():
	case <-sd.c.quit:
		return
	}
	select {
	case <-p.Done():
		reason := reasonMedia
		if errors.Is(p.Err(), rtc.ErrConnectTimeout) {
			reason = reasonTimeout
		}
		cl.end(reason, reason, false) // nothing if the call ended already
	case <-sd.c.quit:
	}
}

func (c *conn) callTrickle(r *Request) {
	sd := c.callSession(r)
	if sd == nil {
		return
	}
	cl := sd.call
	cl.mu.Lock()
	peer := sd.peer
	if peer == nil {
		for _, ci := range candidateInits(r.Cands) {
			if len(sd.cands) < maxQueuedCandidates {
				sd.cands = append(sd.cands, ci)
			}
		}
	}
	cl.mu.Unlock()
	if peer != nil {
		c.addCandidates(peer, r.Cands)
	}
	c.ack(r.Transaction)
}

func (c *conn) callTerminate(r *Request) {
	sd := c.callSession(r)
	if sd == nil {
		return
	}
	c.ack(r.Transaction)
	cl := sd.call
	cl.mu.Lock()
	state, isLeg := cl.state, slices.Contains(cl.legs, sd)
	cl.mu.Unlock()
	switch {
	case sd.isCaller && state == ringing:
		cl.end(reasonOK, reasonCancelled, true)
	case sd.isCaller || sd == cl.answeredLeg():
		cl.end(reasonOK, reasonOK, false)
	case isLeg: // declined
		if cl.dropLeg(sd, reasonBusy) {
			cl.end(reasonBusy, "", false)
		}
	default: // a leg that lost: already told
		sd.finish(reasonOK, false)
	}
}

// answeredLeg returns the leg that answered, or nil.
func (cl *call) answeredLeg() *callSide {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.callee
}

// gone ends what a closed socket's side of the call held: the other side
// is told as if it had hung up (or the caller was unreachable, if no leg
// is left ringing).
func (cl *call) gone(sd *callSide) {
	cl.mu.Lock()
	state, isLeg := cl.state, slices.Contains(cl.legs, sd)
	cl.mu.Unlock()
	switch {
	case sd.isCaller && state == ringing:
		cl.end("", reasonCancelled, true)
	case sd.isCaller:
		cl.end("", reasonOK, false)
	case isLeg:
		if cl.dropLeg(sd, "") {
			cl.end(reasonUnavailable, "", false)
		}
	case sd == cl.answeredLeg():
		cl.end(reasonOK, "", false)
	default:
		sd.finish("", false)
	}
}

// timeout ends a call nobody answered.
func (cl *call) timeout() {
	cl.mu.Lock()
	state := cl.state
	cl.mu.Unlock()
	if state == ringing {
		cl.s.log.Info("sylk call not answered in time", "call", cl.id, "ring_timeout", cl.s.cfg.RingTimeout)
		cl.end(reasonTimeout, reasonCancelled, true)
	}
}

// dropLeg takes a ringing leg out (declined, or its socket closed) and
// tells it reason; it reports whether it was the last leg ringing.
func (cl *call) dropLeg(leg *callSide, reason string) (last bool) {
	cl.mu.Lock()
	i := slices.Index(cl.legs, leg)
	if cl.state != ringing || i < 0 {
		cl.mu.Unlock()
		return false
	}
	cl.legs = slices.Delete(cl.legs, i, i+1)
	last = len(cl.legs) == 0
	cl.mu.Unlock()
	leg.finish(reason, false)
	return last
}

// end ends the call once: the caller is told callerReason, the callee's
// legs calleeReason (an empty reason tells nothing: that side's socket is
// gone), ringing legs are also told of a missed session if missed, and
// every side leaves.
func (cl *call) end(callerReason, calleeReason string, missed bool) {
	cl.mu.Lock()
	if cl.state == ended {
		cl.mu.Unlock()
		return
	}
	wasRinging := cl.state == ringing
	cl.state = ended
	if cl.timer != nil {
		cl.timer.Stop()
	}
	legs := cl.legs
	cl.legs = nil
	callee := cl.callee
	taken := cl.calleeTaken
	cl.mu.Unlock()

	cl.caller.finish(callerReason, false)
	for _, l := range legs {
		l.finish(calleeReason, missed && wasRinging)
	}
	if callee != nil {
		callee.finish(calleeReason, false)
	}
	cl.s.releaseCall(cl.caller.account)
	if taken {
		cl.s.releaseCall(cl.target)
	}
	cl.s.log.Info("sylk call ended", "call", cl.id, "caller_reason", callerReason, "callee_reason", calleeReason)
}

// finish ends one side: its session is forgotten, its client told reason
// (unless empty) and a missed session if missed, and its participant
// leaves (which closes its connection).
func (sd *callSide) finish(reason string, missed bool) {
	sd.c.dropSession(sd.session, sd)
	if reason != "" {
		m := stateEvent(sd.session, "terminated")
		m["reason"] = reason
		sd.c.send(m)
	}
	if missed {
		sd.c.send(message{"sylkrtc": "account-event", "account": sd.account, "event": "missed-session", "originator": originator(sd.call.caller)})
	}
	if sd.part != nil {
		sd.part.Leave()
	}
}
