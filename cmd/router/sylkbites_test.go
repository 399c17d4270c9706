package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/beeppb"
)

// sylkAccounts writes a Sylk accounts file for aors (password "pw-" +
// user) and returns its path.
func sylkAccounts(t *testing.T, aors ...string) string {
	t.Helper()
	var b strings.Builder
	for _, aor := range aors {
		fmt.Fprintf(&b, "%s:%s\n", aor, sylkHA1(aor))
	}
	path := filepath.Join(t.TempDir(), "sylk-accounts")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sylkHA1 is aor's HA1, as sylkrtc.js computes it from the password.
func sylkHA1(aor string) string {
	user, domain, _ := strings.Cut(aor, "@")
	sum := md5.Sum([]byte(user + ":" + domain + ":pw-" + user))
	return hex.EncodeToString(sum[:])
}

// sylkClient is a minimal sylkRTC-2 client: requests with transactions,
// and every message received kept for waits.
type sylkClient struct {
	t    *testing.T
	ws   *websocket.Conn
	next int
	wmu  sync.Mutex
	mu   sync.Mutex
	got  []map[string]any
	used []bool
	err  error
	wake chan struct{}
	done chan struct{}
}

func (r *testRouter) sylk(t *testing.T) *sylkClient {
	t.Helper()
	return dialSylk(t, r.a.addr())
}

// dialSylk opens a Sylk API socket on the router at addr and waits for its
// ready-event; the socket closes at the end of the test.
func dialSylk(t *testing.T, addr string) *sylkClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"sylkRTC-2"}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial("ws://"+addr+"/webrtcgateway/ws", nil)
	if err != nil {
		t.Fatalf("sylk dial: %v", err)
	}
	resp.Body.Close()
	c := &sylkClient{t: t, ws: ws, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go c.read()
	t.Cleanup(func() {
		_ = ws.Close()
		<-c.done
	})
	c.wait(func(m map[string]any) bool { return m["sylkrtc"] == "ready-event" }, "ready-event")
	return c
}

func (c *sylkClient) read() {
	defer close(c.done)
	for {
		var m map[string]any
		err := c.ws.ReadJSON(&m)
		c.mu.Lock()
		if err != nil {
			c.err = err
		} else {
			c.got, c.used = append(c.got, m), append(c.used, false)
		}
		c.mu.Unlock()
		select {
		case c.wake <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// wait returns the first unused message matching, waiting up to 20 s.
func (c *sylkClient) wait(match func(map[string]any) bool, what string) map[string]any {
	c.t.Helper()
	timeout := time.NewTimer(20 * time.Second)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		for i, m := range c.got {
			if !c.used[i] && match(m) {
				c.used[i] = true
				c.mu.Unlock()
				return m
			}
		}
		err := c.err
		c.mu.Unlock()
		if err != nil {
			c.t.Fatalf("sylk: waiting for %s: socket closed: %v", what, err)
		}
		select {
		case <-c.wake:
		case <-timeout.C:
			c.t.Fatalf("sylk: no %s", what)
		}
	}
}

// ack sends a request and fails unless it is acked.
func (c *sylkClient) ack(typ string, fields map[string]any) {
	c.t.Helper()
	c.wmu.Lock()
	c.next++
	tx := fmt.Sprintf("tx-%d", c.next)
	m := map[string]any{"sylkrtc": typ, "transaction": tx}
	for k, v := range fields {
		m[k] = v
	}
	err := c.ws.WriteJSON(m)
	c.wmu.Unlock()
	if err != nil {
		c.t.Fatal(err)
	}
	r := c.wait(func(m map[string]any) bool {
		return (m["sylkrtc"] == "ack" || m["sylkrtc"] == "error") && m["transaction"] == tx
	}, "the reply to "+typ)
	if r["sylkrtc"] != "ack" {
		c.t.Fatalf("%s: %v", typ, r)
	}
}

// login adds and registers aor.
func (c *sylkClient) login(aor string) {
	c.t.Helper()
	c.ack("account-add", map[string]any{"account": aor, "password": sylkHA1(aor)})
	c.ack("account-register", map[string]any{"account": aor})
	c.wait(func(m map[string]any) bool {
		return m["event"] == "registration-state" && m["account"] == aor && m["state"] == "registered"
	}, aor+" registered")
}

// sylkSpeaker is a pion peer that sends Opus with the RFC 6464 audio level
// extension, the way a browser does: what the chunker cuts bites on. It
// counts the packets it receives by payload.
type sylkSpeaker struct {
	t         *testing.T
	pc        *webrtc.PeerConnection
	track     *webrtc.TrackLocalStaticRTP
	connected chan struct{}
	payload   []byte // of every packet sent: a silent Opus frame unless set

	mu      sync.Mutex
	heard   map[string]int // packets received by payload
	missing int            // sequence numbers skipped between packets received
	firstRx time.Time
}

func newSpeaker(t *testing.T) *sylkSpeaker {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	// VP8, as a browser has: a listener answers the video of a feed offer.
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000},
		PayloadType:        96,
	}, webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	s := webrtc.SettingEngine{}
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	api := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(&interceptor.Registry{}), webrtc.WithSettingEngine(s))
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	sp := &sylkSpeaker{t: t, pc: pc, connected: make(chan struct{}), payload: []byte{0xf8, 0xff, 0xfe}, heard: map[string]int{}}
	t.Cleanup(func() { _ = pc.Close() })
	var once sync.Once
	pc.OnConnectionStateChange(func(st webrtc.PeerConnectionState) {
		if st == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(sp.connected) })
		}
	})
	pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		var last uint16
		for i := 0; ; i++ {
			p, _, err := tr.ReadRTP()
			if err != nil {
				return
			}
			sp.mu.Lock()
			if sp.firstRx.IsZero() {
				sp.firstRx = time.Now()
			}
			sp.heard[string(p.Payload)]++
			if d := p.SequenceNumber - last; i == 0 || d < 0x8000 { // not a late packet
				if i > 0 && d > 1 {
					sp.missing += int(d - 1)
				}
				last = p.SequenceNumber
			}
			sp.mu.Unlock()
		}
	})
	if sp.track, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", "sylk"); err != nil {
		t.Fatal(err)
	}
	return sp
}

// gathered sets desc as the local description and returns it with all
// its candidates.
func (sp *sylkSpeaker) gathered(desc webrtc.SessionDescription, err error) string {
	sp.t.Helper()
	if err != nil {
		sp.t.Fatal(err)
	}
	done := webrtc.GatheringCompletePromise(sp.pc)
	if err := sp.pc.SetLocalDescription(desc); err != nil {
		sp.t.Fatal(err)
	}
	<-done
	return sp.pc.LocalDescription().SDP
}

// offer adds the track in direction dir and returns the offer.
func (sp *sylkSpeaker) offer(dir webrtc.RTPTransceiverDirection) string {
	sp.t.Helper()
	if _, err := sp.pc.AddTransceiverFromTrack(sp.track, webrtc.RTPTransceiverInit{Direction: dir}); err != nil {
		sp.t.Fatal(err)
	}
	return sp.gathered(sp.pc.CreateOffer(nil))
}

// answer answers the router's offer, sending the track.
func (sp *sylkSpeaker) answer(offer string) string {
	sp.t.Helper()
	if err := sp.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		sp.t.Fatal(err)
	}
	if _, err := sp.pc.AddTrack(sp.track); err != nil {
		sp.t.Fatal(err)
	}
	return sp.gathered(sp.pc.CreateAnswer(nil))
}

// listen answers the router's offer, sending nothing.
func (sp *sylkSpeaker) listen(offer string) string {
	sp.t.Helper()
	if err := sp.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		sp.t.Fatal(err)
	}
	return sp.gathered(sp.pc.CreateAnswer(nil))
}

// received returns how many packets sp received with from's payload and
// with another, how many sequence numbers were skipped between them, and
// when the first arrived.
func (sp *sylkSpeaker) received(from *sylkSpeaker) (n, others, missing int, first time.Time) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for p, c := range sp.heard {
		if p == string(from.payload) {
			n += c
		} else {
			others += c
		}
	}
	return n, others, sp.missing, sp.firstRx
}

// apply sets the router's answer.
func (sp *sylkSpeaker) apply(answer string) {
	sp.t.Helper()
	if err := sp.pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		sp.t.Fatal(err)
	}
}

// speak waits for the connection, then sends a second of loud 20 ms
// packets followed by 0.8 s of silence, which ends the bite.
func (sp *sylkSpeaker) speak(ctx context.Context) error {
	return sp.talk(ctx, 50, 90)
}

// talk waits for the connection, then sends n 20 ms packets, the first
// loud of them at voice level and the rest silent; n < 0 sends until ctx
// ends, and then returns nil.
func (sp *sylkSpeaker) talk(ctx context.Context, loud, n int) error {
	select {
	case <-sp.connected:
	case <-ctx.Done():
		return fmt.Errorf("not connected: %w", ctx.Err())
	}
	var levelID uint8
	for _, tr := range sp.pc.GetTransceivers() {
		for _, e := range tr.Sender().GetParameters().HeaderExtensions {
			if e.URI == sdp.AudioLevelURI {
				levelID = uint8(e.ID)
			}
		}
	}
	if levelID == 0 {
		return fmt.Errorf("the audio level extension was not negotiated")
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; n < 0 || i < n; i++ {
		level := byte(0x80 | 10) // voice, -10 dBov
		if i >= loud {
			level = 127 // silence
		}
		p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: uint32(i * 960)},
			Payload: sp.payload}
		if err := p.SetExtension(levelID, []byte{level}); err != nil {
			return err
		}
		if err := sp.track.WriteRTP(p); err != nil {
			return err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			if n < 0 {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}

// speakAll runs speak for every speaker at once.
func speakAll(t *testing.T, ctx context.Context, sps ...*sylkSpeaker) {
	t.Helper()
	errs := make(chan error, len(sps))
	for _, sp := range sps {
		go func() { errs <- sp.speak(ctx) }()
	}
	for range sps {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// biteUsers collects bites until every user in want has one keyed key.
func biteUsers(t *testing.T, bites <-chan *beeppb.Bite, key string, want ...string) {
	t.Helper()
	got := map[string]*beeppb.Bite{}
	var others []string
	timeout := time.After(20 * time.Second)
	for len(got) < len(want) {
		select {
		case b := <-bites:
			if b.Key != key {
				others = append(others, b.Key)
				continue
			}
			got[b.User] = b
		case <-timeout:
			t.Fatalf("bites keyed %q from %v; got from %v (other keys %q)", key, want, keys(got), others)
		}
	}
	for _, u := range want {
		b := got[u]
		if b == nil {
			t.Fatalf("no bite of %s keyed %q; got %v", u, key, keys(got))
		}
		if b.Client == "" || len(b.Data) == 0 || b.DurationMs < 500 {
			t.Errorf("bite of %s: client %q, %d bytes, %d ms: want a client id and ≥ 500 ms of audio", u, b.Client, len(b.Data), b.DurationMs)
		}
	}
}

func keys(m map[string]*beeppb.Bite) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSylkBites: the audio of a Sylk 1:1 call and of a Sylk video room
// goes through the default pipeline to NATS: a call's bites are keyed by
// the conversation sylk-call:<call id> (the call_id of incoming-session),
// a room's by the room URI, each with the speaking account as user.
func TestSylkBites(t *testing.T) {
	const alice, bob, carol = "alice@example.com", "bob@example.com", "carol@example.com"
	r := startRouter(t, map[string]string{"SYLK_ACCOUNTS": sylkAccounts(t, alice, bob, carol)})
	bites := r.bites("bite")
	ctx := deadline(t, 60*time.Second)

	t.Run("call", func(t *testing.T) {
		a, b := r.sylk(t), r.sylk(t)
		a.login(alice)
		b.login(bob)
		caller, callee := newSpeaker(t), newSpeaker(t)
		a.ack("session-create", map[string]any{"account": alice, "session": "call-1", "uri": bob, "sdp": caller.offer(webrtc.RTPTransceiverDirectionSendrecv)})
		in := b.wait(func(m map[string]any) bool { return m["event"] == "incoming-session" }, "incoming-session")
		callID, _ := in["call_id"].(string)
		if callID == "" {
			t.Fatalf("incoming-session without call_id: %v", in)
		}
		b.ack("session-answer", map[string]any{"session": in["session"], "sdp": callee.answer(in["sdp"].(string))})
		acc := a.wait(func(m map[string]any) bool {
			return m["sylkrtc"] == "session-event" && m["session"] == "call-1" && m["state"] == "accepted"
		}, "accepted")
		caller.apply(acc["sdp"].(string))
		speakAll(t, ctx, caller, callee)
		biteUsers(t, bites, "sylk-call:"+callID, alice, bob)
	})

	t.Run("room", func(t *testing.T) {
		const room = "standup@conference.example.com"
		r.perms.allow(room, alice, carol)
		var sps []*sylkSpeaker
		for _, aor := range []string{alice, carol} {
			c := r.sylk(t)
			c.login(aor)
			sp := newSpeaker(t)
			session := "conf-" + aor
			c.ack("videoroom-join", map[string]any{"account": aor, "session": session, "uri": room,
				"sdp": sp.offer(webrtc.RTPTransceiverDirectionSendonly), "audio": true, "video": false})
			acc := c.wait(func(m map[string]any) bool {
				return m["sylkrtc"] == "videoroom-event" && m["session"] == session && m["event"] == "session-state" && m["state"] == "accepted"
			}, "accepted")
			sp.apply(acc["sdp"].(string))
			sps = append(sps, sp)
		}
		speakAll(t, ctx, sps...)
		biteUsers(t, bites, room, alice, carol)
	})
}
