package sylk_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
)

// peer is a pion client behaving as sylkrtc.js does on the wire: its SDP
// carries no candidates, which it trickles one per request after the
// request that carried the SDP, then an empty list. It may send the VP8
// fixture at 30 frames a second and silent Opus every 20 ms (audio first),
// and records what it receives (testpeer.Peer).
type peer struct {
	*testpeer.Peer
	t  *testing.T
	pc *webrtc.PeerConnection // Peer.PC

	// Trickle.
	tmu     sync.Mutex
	c       *client
	typ     string
	session string
	pending []webrtc.ICECandidateInit
	ended   bool
	txs     []string
}

// newPeer makes a client peer; with frames, it has VP8 and Opus tracks to
// send (added by addTracks).
func newPeer(t *testing.T, frames []testmedia.Frame) *peer {
	t.Helper()
	var o testpeer.Options
	if frames != nil {
		m, err := testpeer.NewMedia(testpeer.MediaConfig{Frames: frames, StreamID: "stream", AudioFirst: true})
		if err != nil {
			t.Fatal(err)
		}
		o.Media = m
	}
	tp := testpeer.Open(t, o)
	p := &peer{Peer: tp, t: t, pc: tp.PC}
	p.pc.OnICECandidate(p.candidate)
	return p
}

// addTracks adds the peer's tracks on new transceivers of direction dir,
// or, when dir is zero, with AddTrack (onto the transceivers of an offer
// already applied); they send once the peer is connected.
func (p *peer) addTracks(dir webrtc.RTPTransceiverDirection) {
	p.t.Helper()
	if err := p.AddTracks(dir); err != nil {
		p.t.Fatal(err)
	}
	p.Media.Start(p.Connected())
}

// offer makes the peer's offer; its SDP has no candidates.
func (p *peer) offer() string {
	p.t.Helper()
	o, err := p.pc.CreateOffer(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.pc.SetLocalDescription(o); err != nil {
		p.t.Fatal(err)
	}
	if strings.Contains(o.SDP, "a=candidate") {
		p.t.Fatal("the client's offer carries candidates")
	}
	return o.SDP
}

// answer applies the router's offer and returns the peer's answer,
// without candidates.
func (p *peer) answer(offer string) string {
	p.t.Helper()
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		p.t.Fatalf("apply the router's offer: %v", err)
	}
	if p.Media != nil {
		p.addTracks(0)
	}
	a, err := p.pc.CreateAnswer(nil)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.pc.SetLocalDescription(a); err != nil {
		p.t.Fatal(err)
	}
	return a.SDP
}

// apply applies the router's answer.
func (p *peer) apply(answer string) {
	p.t.Helper()
	if err := p.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		p.t.Fatalf("apply the router's answer: %v", err)
	}
}

// trickle starts sending the peer's candidates as requests typ for
// session: those gathered so far, then each as it comes, then [].
func (p *peer) trickle(c *client, typ, session string) {
	p.tmu.Lock()
	defer p.tmu.Unlock()
	p.c, p.typ, p.session = c, typ, session
	for _, ci := range p.pending {
		p.sendCandidates([]webrtc.ICECandidateInit{ci})
	}
	p.pending = nil
	if p.ended {
		p.sendCandidates([]webrtc.ICECandidateInit{})
	}
}

func (p *peer) candidate(cand *webrtc.ICECandidate) {
	p.tmu.Lock()
	defer p.tmu.Unlock()
	if cand == nil {
		p.ended = true
		if p.c != nil {
			p.sendCandidates([]webrtc.ICECandidateInit{})
		}
		return
	}
	if p.c == nil {
		p.pending = append(p.pending, cand.ToJSON())
		return
	}
	p.sendCandidates([]webrtc.ICECandidateInit{cand.ToJSON()})
}

// sendCandidates sends one trickle request. Callers hold tmu. It runs on
// pion's goroutines: an error is reported, not fatal.
func (p *peer) sendCandidates(cands []webrtc.ICECandidateInit) {
	tx := p.c.tx()
	b, _ := json.Marshal(map[string]any{"sylkrtc": p.typ, "transaction": tx, "session": p.session, "candidates": cands})
	p.c.wmu.Lock()
	_ = p.c.ws.SetWriteDeadline(time.Now().Add(waitLong))
	err := p.c.ws.WriteMessage(1, b)
	p.c.wmu.Unlock()
	if err != nil {
		return // the test closed the socket
	}
	p.txs = append(p.txs, tx)
}

// checkTrickles checks that every trickle request was acked, and that the
// last one ended the candidates.
func (p *peer) checkTrickles() {
	p.t.Helper()
	p.tmu.Lock()
	txs := slices.Clone(p.txs)
	p.tmu.Unlock()
	if len(txs) < 2 {
		p.t.Errorf("%d trickle requests sent, want candidates and the end", len(txs))
	}
	for _, tx := range txs {
		if r := p.c.reply(tx); r.str("sylkrtc") != "ack" {
			p.t.Errorf("trickle %s: %v, want ack", tx, r)
		}
	}
}

// waitConnected waits for the peer's connection.
func (p *peer) waitConnected(ctx context.Context, what string) {
	p.t.Helper()
	select {
	case <-p.Connected():
	case <-ctx.Done():
		p.t.Fatalf("%s: not connected", what)
	}
}

// untilMedia waits until the peer received frames video frames and audio
// audio packets.
func (p *peer) untilMedia(ctx context.Context, what string, frames, audio int) {
	p.t.Helper()
	if err := p.UntilMedia(ctx, frames, audio); err != nil {
		f, a := p.Counts()
		p.t.Fatalf("%s: received %d video frames and %d audio packets, want %d and %d", what, f, a, frames, audio)
	}
}

// decodeVideo decodes the video received (through its last complete
// frame) with libvpx and returns the frames decoded and the errors.
func (p *peer) decodeVideo() (frames int, errs []string, mime string) {
	p.t.Helper()
	mime = p.VideoMime()
	frames, errs = testmedia.DecodeVP8(p.t, testpeer.ThroughMarker(p.VideoPackets()))
	return frames, errs, mime
}

// ssrcInEveryMedia checks that every m-section of offer has a=ssrc lines.
func ssrcInEveryMedia(offer string) error {
	var d sdp.SessionDescription
	if err := d.UnmarshalString(offer); err != nil {
		return err
	}
	if len(d.MediaDescriptions) == 0 {
		return fmt.Errorf("no m-section")
	}
	for i, m := range d.MediaDescriptions {
		if !slices.ContainsFunc(m.Attributes, func(a sdp.Attribute) bool { return a.Key == "ssrc" }) {
			return fmt.Errorf("m-section %d (%s) without a=ssrc", i, m.MediaName.Media)
		}
	}
	return nil
}

// candidates counts the a=candidate lines of an SDP.
func candidates(s string) int { return strings.Count(s, "a=candidate:") }
