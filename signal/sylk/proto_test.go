package sylk_test

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/origin"
	"github.com/beepvoice/router/signal/sylk"
)

// TestHandshake: sylkRTC-2 is preferred and echoed, sylkRTC-1 accepted
// with the seed's ready event, anything else is 406; a foreign Origin is
// refused when origins are restricted.
func TestHandshake(t *testing.T) {
	e := newEnv(t, func(c *sylk.Config) { c.CheckOrigin = origin.New([]string{"https://app.example.org"}).Check })
	tests := []struct {
		name      string
		protocols []string
		origin    string
		status    int
	}{
		{"sylkRTC-2", []string{"sylkRTC-2"}, "", http.StatusSwitchingProtocols},
		{"sylkRTC-1", []string{"sylkRTC-1"}, "", http.StatusSwitchingProtocols},
		{"both: sylkRTC-2 chosen", []string{"sylkRTC-1", "sylkRTC-2"}, "", http.StatusSwitchingProtocols},
		{"other protocol", []string{"chat"}, "", http.StatusNotAcceptable},
		{"no protocol", nil, "", http.StatusNotAcceptable},
		{"sylkRTC-3", []string{"sylkRTC-3"}, "", http.StatusNotAcceptable},
		{"allowed origin", []string{"sylkRTC-2"}, "https://app.example.org", http.StatusSwitchingProtocols},
		{"foreign origin", []string{"sylkRTC-2"}, "https://evil.example.com", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			if got := e.status(t, tt.protocols, h); got != tt.status {
				t.Errorf("status %d, want %d", got, tt.status)
			}
		})
	}
	// The chosen protocol and its ready event.
	d := websocket.Dialer{Subprotocols: []string{"sylkRTC-1", "sylkRTC-2"}}
	ws, resp, err := d.Dial(e.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	defer ws.Close()
	if ws.Subprotocol() != "sylkRTC-2" {
		t.Errorf("chose %q, want sylkRTC-2", ws.Subprotocol())
	}
	e.dial(t, sylk.ProtocolV2) // waits for ready-event
	e.dial(t, sylk.ProtocolV1) // waits for the seed's ready event
	if st := e.srv.Stats(); st.Refused != 3 {
		t.Errorf("refused %d handshakes, want 3 (the 406s)", st.Refused)
	}
}

// TestBadInput: every request gets its reply; invalid messages get an
// error (with the transaction when there is one); the socket stays usable
// and nothing is acted on.
func TestBadInput(t *testing.T) {
	e := newEnv(t, nil)
	c := e.dial(t, sylk.ProtocolV2)
	tests := []struct {
		name    string
		raw     string
		reply   string // ack or error
		tx      string // the transaction the reply must carry ("" none)
		errText string
	}{
		{"ping", `{"sylkrtc":"ping","transaction":"t1"}`, "ack", "t1", ""},
		{"unknown type", `{"sylkrtc":"frobnicate","transaction":"t2"}`, "error", "t2", "unknown request"},
		{"not JSON", `hello`, "error", "", "invalid JSON"},
		{"truncated JSON", `{"sylkrtc":"ping","transaction":"t3"`, "error", "", "invalid JSON"},
		{"JSON array", `[1,2]`, "error", "", "invalid JSON"},
		{"no sylkrtc", `{"transaction":"t4"}`, "error", "", "sylkrtc"},
		{"sylkrtc not a string", `{"sylkrtc":5,"transaction":"t5"}`, "error", "", "invalid JSON"},
		{"no transaction", `{"sylkrtc":"ping"}`, "error", "", "no transaction"},
		{"transaction not a string", `{"sylkrtc":"ping","transaction":7}`, "error", "", "invalid JSON"},
		{"field of the wrong type", `{"sylkrtc":"account-add","transaction":"t6","account":5}`, "error", "t6", `"account" must be a string`},
		{"account without @", `{"sylkrtc":"account-add","transaction":"t7","account":"alice","password":"5f4dcc3b5aa765d61d8327deb882cf99"}`, "error", "t7", "user@domain"},
		{"password not an HA1", `{"sylkrtc":"account-add","transaction":"t8","account":"alice@example.com","password":"secret"}`, "error", "t8", "HA1"},
		{"register an account not added", `{"sylkrtc":"account-register","transaction":"t9","account":"alice@example.com"}`, "error", "t9", "unknown account"},
		{"not supported", `{"sylkrtc":"account-fetch-addressbook","transaction":"t10","account":"alice@example.com"}`, "error", "t10", "not supported"},
		{"trickle without candidates", `{"sylkrtc":"session-trickle","transaction":"t11","session":"s"}`, "error", "t11", "candidates"},
		{"trickle of an unknown session", `{"sylkrtc":"session-trickle","transaction":"t12","session":"s","candidates":[]}`, "error", "t12", "no such session"},
		{"too many candidates", `{"sylkrtc":"videoroom-session-trickle","transaction":"t13","session":"s","candidates":[` + strings.Repeat(`{"candidate":""},`, 40) + `{"candidate":""}]}`, "error", "t13", "candidates"},
		{"session-create of an account not added", `{"sylkrtc":"session-create","transaction":"t14","account":"alice@example.com","session":"s","uri":"bob@example.com","sdp":"v=0\r\n"}`, "error", "t14", "unknown account"},
		{"feed answer of an unknown feed", `{"sylkrtc":"videoroom-feed-answer","transaction":"t15","session":"s","feed":"f","sdp":"v=0\r\n"}`, "error", "t15", "no such feed"},
		{"sylkRTC-1 name on sylkRTC-2", `{"sylkrtc":"add_account","transaction":"t16"}`, "error", "t16", "unknown request"},
		{"null fields", `{"sylkrtc":"account-add","transaction":"t17","account":null,"password":null}`, "error", "t17", "user@domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.sendRaw([]byte(tt.raw))
			// Replies come in order: the next unread reply is this one's.
			r := c.wait(func(m msg) bool { s := m.str("sylkrtc"); return s == "ack" || s == "error" }, "a reply")
			if r.str("sylkrtc") != tt.reply || r.str("transaction") != tt.tx || !strings.Contains(r.str("error"), tt.errText) {
				t.Errorf("reply %v, want %s with transaction %q and error containing %q", r, tt.reply, tt.tx, tt.errText)
			}
			if _, has := r["transaction"]; tt.tx == "" && has {
				t.Errorf("reply %v carries a transaction", r)
			}
		})
	}
	if r := c.request("ping", nil); r.str("sylkrtc") != "ack" {
		t.Errorf("ping after bad input: %v", r)
	}
	if st := e.srv.Stats(); st.BadMessages < uint64(len(tests)-1-4) {
		t.Errorf("bad messages %d, want about %d", st.BadMessages, len(tests)-1)
	}
}

// TestMaxMessage: a message over MaxMessage closes the socket with 1009;
// one just under it is handled.
func TestMaxMessage(t *testing.T) {
	e := newEnv(t, func(c *sylk.Config) { c.MaxMessage = 1024 })
	c := e.dial(t, sylk.ProtocolV2)
	pad := strings.Repeat("x", 1024-len(`{"sylkrtc":"ping","transaction":"t1","pad":""}`))
	c.sendRaw([]byte(`{"sylkrtc":"ping","transaction":"t1","pad":"` + pad + `"}`))
	if r := c.reply("t1"); r.str("sylkrtc") != "ack" {
		t.Fatalf("ping of MaxMessage bytes: %v", r)
	}
	c.sendRaw([]byte(`{"sylkrtc":"ping","transaction":"t2","pad":"` + pad + `x"}`))
	err := c.closedErr()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
		t.Errorf("socket closed with %v, want 1009", err)
	}
}

// TestRegistration: a register with the account's HA1 is registering then
// registered; a wrong HA1 or an unknown account fails with 403 and is
// never registered; without an accounts file registration is refused
// unless Dev; sylkRTC-1 uses the seed's names and data object.
func TestRegistration(t *testing.T) {
	tests := []struct {
		name     string
		accounts string // "-": none
		dev      bool
		protocol string
		account  string
		password string
		state    string
		reason   string
	}{
		{"right password", "", false, sylk.ProtocolV2, "alice@example.com", "pw-alice", "registered", ""},
		{"domain in upper case", "", false, sylk.ProtocolV2, "alice@EXAMPLE.com", "pw-alice", "registered", ""},
		{"wrong password", "", false, sylk.ProtocolV2, "alice@example.com", "pw-bob", "failed", "403 Forbidden"},
		{"unknown account", "", false, sylk.ProtocolV2, "mallory@example.com", "x", "failed", "403 Forbidden"},
		{"no accounts file", "-", false, sylk.ProtocolV2, "alice@example.com", "pw-alice", "failed", "403 Forbidden (registration is not enabled on this server)"},
		{"dev without accounts file", "-", true, sylk.ProtocolV2, "anyone@example.net", "x", "registered", ""},
		{"dev with an accounts file checks it", "", true, sylk.ProtocolV2, "alice@example.com", "x", "failed", "403 Forbidden"},
		{"sylkRTC-1 right password", "", false, sylk.ProtocolV1, "alice@example.com", "pw-alice", "registered", ""},
		{"sylkRTC-1 wrong password", "", false, sylk.ProtocolV1, "alice@example.com", "x", "failed", "403 Forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *sylk.Config) {
				c.Dev = tt.dev
				if tt.accounts == "-" {
					c.AccountsFile = "-"
				}
			})
			c := e.dial(t, tt.protocol)
			add, reg := "account-add", "account-register"
			if tt.protocol == sylk.ProtocolV1 {
				add, reg = "add_account", "register"
			}
			aor := strings.ToLower(tt.account[:strings.IndexByte(tt.account, '@')]) + "@" + strings.ToLower(tt.account[strings.IndexByte(tt.account, '@')+1:])
			c.mustAck(add, map[string]any{"account": tt.account, "password": ha1(aor, tt.password)})
			c.mustAck(reg, map[string]any{"account": tt.account})
			state := func(want string) func(msg) bool {
				if tt.protocol == sylk.ProtocolV1 {
					return func(m msg) bool {
						d, _ := m["data"].(map[string]any)
						return m.str("sylkrtc") == "account_event" && m.str("event") == "registration_state" && d != nil && d["state"] == want
					}
				}
				return regState(aor, want)
			}
			c.wait(state("registering"), "registering")
			got := c.wait(func(m msg) bool { return state("registered")(m) || state("failed")(m) }, "the registration's outcome")
			gotState, gotReason := got.str("state"), got.str("reason")
			if d, ok := got["data"].(map[string]any); ok {
				gotState, _ = d["state"].(string)
				gotReason, _ = d["reason"].(string)
			}
			if gotState != tt.state || gotReason != tt.reason {
				t.Errorf("registration %s %q, want %s %q", gotState, gotReason, tt.state, tt.reason)
			}
			if tt.protocol == sylk.ProtocolV1 {
				return
			}
			// Only a registered account can be called: calling it from
			// another socket rings, or finds nobody.
			if tt.accounts == "-" && !tt.dev {
				return // nobody can call
			}
			caller := e.dial(t, sylk.ProtocolV2)
			caller.login(bobAOR)
			p := newPeer(t, nil)
			if _, err := p.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
				t.Fatal(err)
			}
			caller.mustAck("session-create", map[string]any{"account": bobAOR, "session": "c", "uri": tt.account, "sdp": p.offer()})
			if tt.state == "registered" {
				c.wait(func(m msg) bool { return m.str("event") == "incoming-session" }, "incoming-session")
			} else if r := terminated(t, caller, "c"); !strings.HasPrefix(r, "4") {
				t.Errorf("call to an account that failed to register: %q, want a 4xx", r)
			}
		})
	}
}

// TestReloadAccounts: after the file changes, a registration it no longer
// accepts ends with registration-state failed, and the new password works.
func TestReloadAccounts(t *testing.T) {
	path := writeAccounts(t, testAccounts)
	e := newEnv(t, func(c *sylk.Config) { c.AccountsFile = path })
	c := e.dial(t, sylk.ProtocolV2)
	c.login("alice@example.com")
	c2 := e.dial(t, sylk.ProtocolV2)
	c2.login("bob@example.com")
	if err := os.WriteFile(path, []byte("alice@example.com:"+ha1("alice@example.com", "new")+"\nbob@example.com:"+ha1("bob@example.com", "pw-bob")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.ReloadAccounts(); err != nil {
		t.Fatal(err)
	}
	if m := c.wait(regState("alice@example.com", "failed"), "alice's registration ended"); !strings.HasPrefix(m.str("reason"), "403") {
		t.Errorf("reason %q, want 403", m.str("reason"))
	}
	c2.mustAck("ping", nil) // whatever the reload sent bob came before this
	if _, err := c2.waitErr(regState("bob@example.com", "failed"), 0); err == nil {
		t.Error("bob's registration ended, but his password did not change")
	}
	// A broken file keeps the accounts in use.
	if err := os.WriteFile(path, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.ReloadAccounts(); err == nil || !strings.Contains(err.Error(), ":1:") {
		t.Errorf("reload of a broken file: %v, want an error naming line 1", err)
	}
	c3 := e.dial(t, sylk.ProtocolV2)
	c3.mustAck("account-add", map[string]any{"account": "alice@example.com", "password": ha1("alice@example.com", "new")})
	c3.mustAck("account-register", map[string]any{"account": "alice@example.com"})
	c3.wait(regState("alice@example.com", "registered"), "registered with the new password")
}

// TestLoadAccounts: the accounts file's syntax.
func TestLoadAccounts(t *testing.T) {
	good := ha1("alice@example.com", "pw")
	tests := []struct {
		name, text string
		n          int
		err        string
	}{
		{"accounts, comments and blank lines", "# c\n\nalice@example.com:" + good + "\n  bob@example.com : " + strings.ToUpper(good) + "  \n", 2, ""},
		{"empty", "", 0, ""},
		{"no colon", "alice@example.com\n", 0, ":1:"},
		{"no @", "alice:" + good + "\n", 0, ":1: the account"},
		{"short HA1", "# x\nalice@example.com:abc\n", 0, ":2: the HA1"},
		{"twice", "alice@example.com:" + good + "\nalice@example.com:" + good + "\n", 0, ":2: account listed twice"},
		{"line too long", "alice@example.com:" + strings.Repeat("a", 5000) + "\n", 0, "token too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := t.TempDir() + "/accounts"
			if err := os.WriteFile(path, []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := sylk.LoadAccounts(path)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || a.Len() != tt.n {
				t.Fatalf("%v, %d accounts; want %d", err, a.Len(), tt.n)
			}
			if tt.n > 0 && (!a.Check("alice@example.com", good) || a.Check("alice@example.com", ha1("alice@example.com", "other")) || a.Check("carol@example.com", good)) {
				t.Error("Check accepts the wrong HA1 or refuses the right one")
			}
		})
	}
	if _, err := sylk.LoadAccounts(t.TempDir() + "/missing"); err == nil {
		t.Error("a missing file loads")
	}
}

// TestLimits: the bounds answer clearly and leave the socket usable.
func TestLimits(t *testing.T) {
	t.Run("connections: 503", func(t *testing.T) {
		e := newEnv(t, func(c *sylk.Config) { c.MaxConnections = 1 })
		e.dial(t, sylk.ProtocolV2)
		if got := e.status(t, []string{"sylkRTC-2"}, nil); got != http.StatusServiceUnavailable {
			t.Errorf("second socket: %d, want 503", got)
		}
	})
	t.Run("accounts per socket", func(t *testing.T) {
		e := newEnv(t, func(c *sylk.Config) { c.MaxAccountsPerConnection = 1 })
		c := e.dial(t, sylk.ProtocolV2)
		c.login("alice@example.com")
		r := c.request("account-add", map[string]any{"account": "bob@example.com", "password": ha1("bob@example.com", "pw-bob")})
		if r.str("sylkrtc") != "error" || !strings.Contains(r.str("error"), "too many accounts") {
			t.Errorf("second account: %v", r)
		}
		if r := c.request("account-add", map[string]any{"account": "alice@example.com", "password": ha1("alice@example.com", "pw-alice")}); r.str("sylkrtc") != "error" {
			t.Errorf("the same account twice: %v", r)
		}
	})
	t.Run("registrations per account", func(t *testing.T) {
		e := newEnv(t, func(c *sylk.Config) { c.MaxRegistrationsPerAccount = 1 })
		e.dial(t, sylk.ProtocolV2).login("alice@example.com")
		c := e.dial(t, sylk.ProtocolV2)
		c.mustAck("account-add", map[string]any{"account": "alice@example.com", "password": ha1("alice@example.com", "pw-alice")})
		c.mustAck("account-register", map[string]any{"account": "alice@example.com"})
		if m := c.wait(regState("alice@example.com", "failed"), "failed"); !strings.Contains(m.str("reason"), "too many registrations") {
			t.Errorf("second registration: %v", m)
		}
	})
	t.Run("rooms per socket", func(t *testing.T) {
		e := newEnv(t, func(c *sylk.Config) { c.MaxRoomsPerConnection = 1 })
		c := e.dial(t, sylk.ProtocolV2)
		c.login("alice@example.com")
		offer := func() string {
			p := newPeer(t, nil)
			if _, err := p.pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
				t.Fatal(err)
			}
			return p.offer()
		}
		c.mustAck("videoroom-join", map[string]any{"account": "alice@example.com", "session": "s1", "uri": "r1@example.com", "sdp": offer()})
		r := c.request("videoroom-join", map[string]any{"account": "alice@example.com", "session": "s2", "uri": "r2@example.com", "sdp": offer()})
		if r.str("sylkrtc") != "error" || !strings.Contains(r.str("error"), "too many rooms") {
			t.Errorf("second room: %v", r)
		}
		if r := c.request("videoroom-join", map[string]any{"account": "alice@example.com", "session": "s1", "uri": "r1@example.com", "sdp": offer()}); r.str("sylkrtc") != "error" {
			t.Errorf("a session id in use: %v", r)
		}
	})
	t.Run("idle socket closed", func(t *testing.T) {
		e := newEnv(t, func(c *sylk.Config) { c.IdleTimeout = 200 * time.Millisecond })
		c := e.dial(t, sylk.ProtocolV2)
		if err := c.closedErr(); err == nil {
			t.Error("no error")
		}
	})
}
