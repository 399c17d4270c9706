package sylk_test

import (
	"crypto/rand"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/signal/sylk"
)

// sipRegistrar is a SIP registrar on 127.0.0.1 built with sipgo, as a
// real one behaves for REGISTER: a request without credentials (or with a
// nonce it did not issue) gets 401 Unauthorized with a digest challenge
// (realm = the domain, a fresh nonce, qop=auth); the answer is checked
// against the account's known HA1 (401 if it is wrong); a good one gets
// 200 OK with the binding's lifetime (the Expires asked for, 0 removes
// it). Every REGISTER it answers is recorded.
type sipRegistrar struct {
	t    *testing.T
	uri  string
	ua   *sipgo.UserAgent
	pc   net.PacketConn
	done chan struct{}
	ha1  map[string]string // user → HA1 (realm example.com)
	logs *testutil.Buffer

	// While holding, every answer waits until release; arrived gets a
	// value as each held REGISTER arrives.
	holding     atomic.Bool
	hold        chan struct{}
	arrived     chan struct{}
	releaseOnce sync.Once

	mu       sync.Mutex
	nonces   map[string]bool
	got      []sipRecord
	notify   chan struct{}
	stopOnce sync.Once
}

// sipRecord is one REGISTER the registrar answered.
type sipRecord struct {
	at      time.Time
	user    string
	callID  string
	contact string
	expires int // asked for (Expires header)
	code    int // the answer
}

// newSIPRegistrar starts a registrar knowing the test accounts' HA1s;
// it stops with the test.
func newSIPRegistrar(t *testing.T) *sipRegistrar {
	t.Helper()
	r := &sipRegistrar{t: t, done: make(chan struct{}), ha1: map[string]string{}, nonces: map[string]bool{},
		notify: make(chan struct{}, 1), logs: &testutil.Buffer{}, hold: make(chan struct{}), arrived: make(chan struct{}, 1)}
	for _, a := range testAccounts {
		r.ha1[strings.SplitN(a, "@", 2)[0]] = ha1(a, password(a))
	}
	log := slog.New(slog.NewTextHandler(r.logs, nil))
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("test-registrar"),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(log)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(log)))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := sipgo.NewServer(ua, sipgo.WithServerLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	srv.OnRegister(r.register)
	r.pc, err = net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.ua = ua
	r.uri = "sip:" + r.pc.LocalAddr().String() + ";transport=udp"
	go func() {
		defer close(r.done)
		_ = srv.ServeUDP(r.pc)
	}()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("registrar log:\n%s", r.logs.String())
		}
	})
	return r
}

// stop takes the registrar down: from then on nothing answers.
func (r *sipRegistrar) stop() {
	r.release()
	r.stopOnce.Do(func() {
		_ = r.ua.Close()
		_ = r.pc.Close()
		<-r.done
	})
}

// release lets held answers go.
func (r *sipRegistrar) release() { r.releaseOnce.Do(func() { close(r.hold) }) }

// register answers a REGISTER.
func (r *sipRegistrar) register(req *sip.Request, tx sip.ServerTransaction) {
	if r.holding.Load() {
		select {
		case r.arrived <- struct{}{}:
		default:
		}
		<-r.hold
	}
	rec := sipRecord{at: time.Now(), callID: req.CallID().Value(), expires: -1}
	if to := req.To(); to != nil {
		rec.user = to.Address.User
	}
	if c := req.Contact(); c != nil {
		rec.contact = c.Address.User
	}
	if h := req.GetHeader("Expires"); h != nil {
		rec.expires, _ = strconv.Atoi(h.Value())
	}
	res := r.answer(req, rec.user)
	rec.code = res.StatusCode
	r.mu.Lock()
	r.got = append(r.got, rec)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	_ = tx.Respond(res)
}

// answer checks the credentials of req for user.
func (r *sipRegistrar) answer(req *sip.Request, user string) *sip.Response {
	h := req.GetHeader("Authorization")
	if h == nil {
		return r.challenge(req)
	}
	cred, err := digest.ParseCredentials(h.Value())
	r.mu.Lock()
	issued := err == nil && r.nonces[cred.Nonce]
	r.mu.Unlock()
	want, known := r.ha1[user]
	if !issued || !known || cred.Username != user || cred.Realm != "example.com" {
		return r.challenge(req)
	}
	chal := &digest.Challenge{Realm: cred.Realm, Nonce: cred.Nonce, Algorithm: "MD5", QOP: []string{"auth"}}
	ok, err := digest.Digest(chal, digest.Options{Method: "REGISTER", URI: cred.URI, Username: user, A1: want, Cnonce: cred.Cnonce, Count: cred.Nc})
	if err != nil || ok.Response != cred.Response || cred.URI != req.Recipient.String() {
		return sip.NewResponseFromRequest(req, sip.StatusUnauthorized, "Unauthorized", nil)
	}
	res := sip.NewResponseFromRequest(req, sip.StatusOK, "OK", nil)
	if c := req.Contact(); c != nil {
		res.AppendHeader(c.Clone())
	}
	if e := req.GetHeader("Expires"); e != nil {
		res.AppendHeader(sip.NewHeader("Expires", e.Value()))
	}
	return res
}

// challenge is a 401 with a fresh nonce.
func (r *sipRegistrar) challenge(req *sip.Request) *sip.Response {
	nonce := rand.Text()
	r.mu.Lock()
	r.nonces[nonce] = true
	r.mu.Unlock()
	chal := digest.Challenge{Realm: "example.com", Nonce: nonce, Algorithm: "MD5", QOP: []string{"auth"}}
	res := sip.NewResponseFromRequest(req, sip.StatusUnauthorized, "Unauthorized", nil)
	res.AppendHeader(sip.NewHeader("WWW-Authenticate", chal.String()))
	return res
}

// records returns what the registrar answered so far.
func (r *sipRegistrar) records() []sipRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]sipRecord(nil), r.got...)
}

// wait returns the first record matching, waiting up to waitLong.
func (r *sipRegistrar) wait(match func(sipRecord) bool, what string) sipRecord {
	r.t.Helper()
	deadline := time.NewTimer(waitLong)
	defer deadline.Stop()
	for {
		for _, rec := range r.records() {
			if match(rec) {
				return rec
			}
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			r.t.Fatalf("registrar: no %s; got %+v", what, r.records())
		}
	}
}

// registered returns the 200 OK of alice's first registration (Expires > 0).
func (r *sipRegistrar) registered(user string) sipRecord {
	r.t.Helper()
	return r.wait(func(rec sipRecord) bool { return rec.user == user && rec.code == 200 && rec.expires > 0 }, user+" registered")
}

// unregistered waits for the REGISTER with Expires: 0 of the binding callID.
func (r *sipRegistrar) unregistered(callID string) sipRecord {
	r.t.Helper()
	return r.wait(func(rec sipRecord) bool { return rec.callID == callID && rec.code == 200 && rec.expires == 0 }, "unregistration of "+callID)
}

// sipEnv is an env whose registrations go to reg, not to local accounts.
func sipEnv(t *testing.T, reg *sipRegistrar, tune func(*sylk.Config)) *env {
	return newEnv(t, func(c *sylk.Config) {
		c.AccountsFile = "-"
		c.SIPRegistrar = reg.uri
		c.SIPTimeout = 500 * time.Millisecond
		if tune != nil {
			tune(c)
		}
	})
}

// registerOutcome adds aor with the HA1 of password, registers it and
// returns the registration-state that ends registering.
func registerOutcome(t *testing.T, c *client, aor, password string) msg {
	t.Helper()
	c.mustAck("account-add", map[string]any{"account": aor, "password": ha1(aor, password)})
	c.mustAck("account-register", map[string]any{"account": aor})
	c.wait(regState(aor, "registering"), "registering")
	return c.wait(func(m msg) bool { return regState(aor, "registered")(m) || regState(aor, "failed")(m) }, "the registration's outcome")
}

// TestSIPRegistration: with a SIP registrar, account-register sends a
// REGISTER that answers the digest challenge from the HA1 (registered);
// a wrong HA1 fails with the registrar's 401 Unauthorized; a registrar
// that does not answer fails with 408 Request Timeout. A SIP-registered
// account can be called.
func TestSIPRegistration(t *testing.T) {
	t.Run("registered", func(t *testing.T) {
		reg := newSIPRegistrar(t)
		e := sipEnv(t, reg, nil)
		c := e.dial(t, sylk.ProtocolV2)
		if got := registerOutcome(t, c, aliceAOR, password(aliceAOR)); got.str("state") != "registered" {
			t.Fatalf("registration %v, want registered", got)
		}
		ok := reg.registered("alice")
		recs := reg.records()
		if len(recs) < 2 || recs[0].code != 401 || recs[0].callID != ok.callID {
			t.Errorf("registrar saw %+v: want a 401 challenge, then the answer in the same Call-ID", recs)
		}
		if ok.expires != int(sylk.DefaultSIPExpires/time.Second) {
			t.Errorf("Expires %d, want %d", ok.expires, int(sylk.DefaultSIPExpires/time.Second))
		}
		if s := e.srv.Stats(); s.Registered != 1 || s.RegisterFailed != 0 {
			t.Errorf("stats %+v: want 1 registered", s)
		}
		// Registered means reachable: a call rings it.
		caller := e.dial(t, sylk.ProtocolV2)
		if got := registerOutcome(t, caller, bobAOR, password(bobAOR)); got.str("state") != "registered" {
			t.Fatalf("bob: %v", got)
		}
		p := callerPeer(t)
		caller.mustAck("session-create", map[string]any{"account": bobAOR, "session": "c1", "uri": aliceAOR, "sdp": p.offer()})
		c.wait(func(m msg) bool { return m.str("event") == "incoming-session" && m.str("account") == aliceAOR }, "incoming-session")
	})
	t.Run("wrong HA1", func(t *testing.T) {
		reg := newSIPRegistrar(t)
		e := sipEnv(t, reg, nil)
		c := e.dial(t, sylk.ProtocolV2)
		got := registerOutcome(t, c, aliceAOR, "not-her-password")
		if got.str("state") != "failed" || got.str("reason") != "401 Unauthorized" {
			t.Errorf("registration %v, want failed 401 Unauthorized", got)
		}
		if s := e.srv.Stats(); s.Registered != 0 || s.RegisterFailed != 1 {
			t.Errorf("stats %+v: want 1 failed", s)
		}
	})
	t.Run("registrar down", func(t *testing.T) {
		reg := newSIPRegistrar(t)
		e := sipEnv(t, reg, nil)
		reg.stop()
		c := e.dial(t, sylk.ProtocolV2)
		start := time.Now()
		got := registerOutcome(t, c, aliceAOR, password(aliceAOR))
		if got.str("state") != "failed" || got.str("reason") != "408 Request Timeout" {
			t.Errorf("registration %v, want failed 408 Request Timeout", got)
		}
		if d := time.Since(start); d > waitLong/2 {
			t.Errorf("the timeout took %v, want about SIPTimeout (500ms)", d)
		}
		// The socket stayed usable meanwhile.
		c.mustAck("ping", nil)
	})
}

// TestSIPRefresh: a registration is refreshed in its Call-ID before the
// lifetime the registrar granted runs out.
func TestSIPRefresh(t *testing.T) {
	reg := newSIPRegistrar(t)
	const lifetime = 3 * time.Second
	e := sipEnv(t, reg, func(c *sylk.Config) { c.SIPExpires = lifetime })
	c := e.dial(t, sylk.ProtocolV2)
	if got := registerOutcome(t, c, aliceAOR, password(aliceAOR)); got.str("state") != "registered" {
		t.Fatalf("registration %v", got)
	}
	first := reg.registered("alice")
	refresh := reg.wait(func(r sipRecord) bool {
		return r.callID == first.callID && r.code == 200 && r.expires > 0 && r.at.After(first.at)
	}, "a refresh")
	if gap := refresh.at.Sub(first.at); gap >= lifetime {
		t.Errorf("refreshed %v after registering, want before the %v lifetime ends", gap, lifetime)
	}
	if refresh.contact != first.contact {
		t.Errorf("the refresh's Contact %q, want the same binding %q", refresh.contact, first.contact)
	}
	if i := c.index(regState(aliceAOR, "failed")); i >= 0 {
		t.Errorf("registration failed: %v", c.all()[i])
	}
}

// TestSIPLost: a registration whose refreshes fail (the registrar went
// away) is reported failed, with the last reason, after the bounded
// retries, and the account is no longer reachable.
func TestSIPLost(t *testing.T) {
	reg := newSIPRegistrar(t)
	e := sipEnv(t, reg, func(c *sylk.Config) { c.SIPExpires = 2 * time.Second })
	c := e.dial(t, sylk.ProtocolV2)
	if got := registerOutcome(t, c, aliceAOR, password(aliceAOR)); got.str("state") != "registered" {
		t.Fatalf("registration %v", got)
	}
	reg.stop()
	lost := c.wait(regState(aliceAOR, "failed"), "the registration lost")
	if lost.str("reason") != "408 Request Timeout" {
		t.Errorf("lost with %q, want 408 Request Timeout", lost.str("reason"))
	}
	caller := e.dial(t, sylk.ProtocolV2)
	caller.mustAck("account-add", map[string]any{"account": bobAOR, "password": ha1(bobAOR, password(bobAOR))})
	// Bob cannot register (the registrar is gone) nor call: he is refused.
	if r := caller.request("session-create", map[string]any{"account": bobAOR, "session": "c1", "uri": aliceAOR, "sdp": callerPeer(t).offer()}); r.str("sylkrtc") != "error" {
		t.Errorf("a call from an account never registered: %v, want error", r)
	}
}

// TestSIPInFlight: past SIPMaxInFlight REGISTER transactions a
// registration fails at once with 503.
func TestSIPInFlight(t *testing.T) {
	reg := newSIPRegistrar(t)
	reg.holding.Store(true)
	e := sipEnv(t, reg, func(c *sylk.Config) {
		c.SIPMaxInFlight = 1
		c.SIPTimeout = waitLong
	})
	a, b := e.dial(t, sylk.ProtocolV2), e.dial(t, sylk.ProtocolV2)
	a.mustAck("account-add", map[string]any{"account": aliceAOR, "password": ha1(aliceAOR, password(aliceAOR))})
	a.mustAck("account-register", map[string]any{"account": aliceAOR})
	select {
	case <-reg.arrived: // Alice's REGISTER is in flight, held
	case <-time.After(waitLong):
		t.Fatal("the registrar got no REGISTER")
	}
	got := registerOutcome(t, b, bobAOR, password(bobAOR))
	if got.str("state") != "failed" || got.str("reason") != "503 Service Unavailable (too many SIP registrations in progress)" {
		t.Errorf("second registration %v, want failed 503", got)
	}
	reg.release()
	if got := a.wait(func(m msg) bool { return regState(aliceAOR, "registered")(m) || regState(aliceAOR, "failed")(m) }, "alice's outcome"); got.str("state") != "registered" {
		t.Errorf("alice: %v, want registered once the registrar answers", got)
	}
}

// TestSIPUnregister: the binding is removed (REGISTER Expires: 0 in its
// Call-ID) on account-unregister, on account-remove, when the socket
// closes and when the Server closes.
func TestSIPUnregister(t *testing.T) {
	setup := func(t *testing.T) (*sipRegistrar, *env, *client, sipRecord) {
		reg := newSIPRegistrar(t)
		e := sipEnv(t, reg, nil)
		c := e.dial(t, sylk.ProtocolV2)
		if got := registerOutcome(t, c, aliceAOR, password(aliceAOR)); got.str("state") != "registered" {
			t.Fatalf("registration %v", got)
		}
		return reg, e, c, reg.registered("alice")
	}
	t.Run("account-unregister", func(t *testing.T) {
		reg, e, c, ok := setup(t)
		c.mustAck("account-unregister", map[string]any{"account": aliceAOR})
		reg.unregistered(ok.callID)
		// No longer reachable.
		caller := e.dial(t, sylk.ProtocolV2)
		registerOutcome(t, caller, bobAOR, password(bobAOR))
		p := callerPeer(t)
		caller.mustAck("session-create", map[string]any{"account": bobAOR, "session": "c1", "uri": aliceAOR, "sdp": p.offer()})
		if r := terminated(t, caller, "c1"); !strings.HasPrefix(r, "4") {
			t.Errorf("call to an unregistered account: %q, want a 4xx", r)
		}
		// Registering again makes a new binding.
		if got := registerOutcome2(t, c, aliceAOR); got.str("state") != "registered" {
			t.Fatalf("registration again: %v", got)
		}
	})
	t.Run("account-remove", func(t *testing.T) {
		reg, _, c, ok := setup(t)
		c.mustAck("account-remove", map[string]any{"account": aliceAOR})
		reg.unregistered(ok.callID)
	})
	t.Run("socket close", func(t *testing.T) {
		reg, _, c, ok := setup(t)
		c.close()
		reg.unregistered(ok.callID)
	})
	t.Run("server close", func(t *testing.T) {
		reg, e, _, ok := setup(t)
		e.srv.Close()
		// Close waits for the unregistrations: the registrar has it now.
		found := false
		for _, r := range reg.records() {
			found = found || r.callID == ok.callID && r.expires == 0 && r.code == 200
		}
		if !found {
			t.Errorf("after Close the registrar saw %+v: want the unregistration of %s", reg.records(), ok.callID)
		}
	})
}

// registerOutcome2 registers an account already added and returns the
// outcome.
func registerOutcome2(t *testing.T, c *client, aor string) msg {
	t.Helper()
	c.mustAck("account-register", map[string]any{"account": aor})
	return c.wait(func(m msg) bool { return regState(aor, "registered")(m) || regState(aor, "failed")(m) }, "the registration's outcome")
}

// TestSIPRegistrarAddress: New refuses a registrar it cannot use.
func TestSIPRegistrarAddress(t *testing.T) {
	for _, uri := range []string{"http://example.com", "sip:alice@example.com", "sip:127.0.0.1:5060;transport=tls"} {
		t.Run(uri, func(t *testing.T) {
			e := newEnv(t, nil)
			_, err := sylk.New(sylk.Config{Rooms: e.rooms, Permissions: permissions.AllowAll{}, SIPRegistrar: uri})
			if err == nil {
				t.Fatalf("New accepted SIP_REGISTRAR %q", uri)
			}
			if !strings.Contains(err.Error(), "registrar") {
				t.Errorf("error %q does not name the registrar", err)
			}
		})
	}
}

// callerPeer is a peer whose offer receives audio, enough to ring.
func callerPeer(t *testing.T) *peer {
	t.Helper()
	p := newPeer(t, nil)
	if _, err := p.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
		t.Fatal(err)
	}
	return p
}
