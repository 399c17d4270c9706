package e2e

import (
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// sylkMedia is what testdata/sylk.js reports of one peer connection.
type sylkMedia struct {
	State            string
	AudioPackets     int
	TotalAudioEnergy float64
	FramesDecoded    int
	FrameWidth       int
	VideoPackets     int
	AudioSent        int
	VideoSent        int
	Local, Remote    string
}

func (m sylkMedia) sample(name string) mediaSample {
	return mediaSample{Name: name, State: m.State, Audio: m.AudioPackets, Energy: m.TotalAudioEnergy, Frames: m.FramesDecoded}
}

// sylkInfo is window.sylk.info() of testdata/sylk.js.
type sylkInfo struct {
	Protocol string
	Ready    bool
	Closed   string
	Errors   []string
	Pings    struct{ Sent, Acked, Errors, Missed, MaxMissed int }
	Trickles struct{ Sent, Acked, Errors, Ends int }

	Registration map[string]struct{ State, Reason string }
	ServerSdps   []struct {
		What       string
		Candidates int
		Sections   int
		NoSsrc     []int
	}
	ClientSdpCandidates int
	UnknownTransactions int
	Calls               []struct {
		ID, Direction, Peer string
		States              []string
		Reason              string
		Tracks              []string
		SdpInAccepted       bool
		MediaTypes          []string
		sylkMedia
	}
	Conferences []struct {
		ID, URI             string
		States              []string
		Accepted            *struct{ Audio, Video bool }
		Joined, Left        []string
		TerminatedBeforeAck bool
		sylkMedia
	}
	Feeds []struct {
		ID, Publisher, URI string
		States             []string
		Tracks             []string
		VideoWidth         int
		sylkMedia
	}
}

// sylkPage is one tab running testdata/sylk.js.
type sylkPage struct {
	*tab
	account string
}

func (p *sylkPage) info() (sylkInfo, error) {
	var in sylkInfo
	err := p.eval(10*time.Second, `sylk.info()`, &in)
	return in, err
}

// ha1 is the password sylkrtc.js sends: md5(user:domain:password), hex.
func ha1(account, password string) string {
	user, domain, _ := strings.Cut(account, "@")
	sum := md5.Sum([]byte(user + ":" + domain + ":" + password))
	return hex.EncodeToString(sum[:])
}

// sylkSetup makes a looping recording, writes a SYLK_ACCOUNTS file for
// accounts (password "pw-<account>"), starts the router with it (so that
// registration checks the HA1 as in production, -dev or not), one browser,
// and one tab per account that connects and registers its account.
func sylkSetup(t *testing.T, accounts ...string) (*router, []*sylkPage) {
	t.Helper()
	dir := t.TempDir()
	sp := &speech{Voice: "en-gb", Lead: 0.2, Gap: 0.4, Trail: 0.4, Phrases: []string{"alpha bravo charlie", "delta echo foxtrot"}}
	makeSpeech(t, dir, "sylk", sp)
	var lines []string
	for _, a := range accounts {
		lines = append(lines, a+":"+ha1(a, "pw-"+a))
	}
	accFile := filepath.Join(dir, "accounts")
	if err := os.WriteFile(accFile, []byte("# e2e accounts\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := startRouterEnv(t, "SYLK_ACCOUNTS="+accFile)
	pages := frontendPages(t)
	b, err := newBrowser(t, "sylk", sp.Path) // looping
	if err != nil {
		t.Fatal(err)
	}
	u := pages.URL + "/sylk?ws=" + rt.WS + "/webrtcgateway/ws"
	var ps []*sylkPage
	dumpPagesOnFailure(t, `sylk.info().then((i) => Object.assign(i, { log: sylk.log }))`, func() []*tab { return pageTabs(ps) })
	for i, a := range accounts {
		tb, err := b.open(strings.Split(a, "@")[0], u, i == 0)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, &sylkPage{tab: tb, account: a})
	}
	err = evalAll(pageTabs(ps), func(tb *tab) error {
		p := pageOf(ps, tb)
		if err := tb.eval(30*time.Second, `sylk.connect().then(() => sylk.protocol)`, nil); err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		var state string
		js := fmt.Sprintf(`sylk.addAccount(%q, %q)`, p.account, ha1(p.account, "pw-"+p.account))
		if err := tb.eval(30*time.Second, js, &state); err != nil {
			return fmt.Errorf("register %s: %w", p.account, err)
		}
		if state != "registered" {
			return fmt.Errorf("register %s: %s", p.account, state)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rt, ps
}

func pageTabs(ps []*sylkPage) []*tab {
	var out []*tab
	for _, p := range ps {
		out = append(out, p.tab)
	}
	return out
}

func pageOf(ps []*sylkPage, tb *tab) *sylkPage {
	for _, p := range ps {
		if p.tab == tb {
			return p
		}
	}
	return nil
}

// sylkFinalChecks checks what every page saw over the whole test: the
// subprotocol, pings answered, every trickle acked and ended, no
// candidates in the client's SDPs, candidates in every server SDP (and
// a=ssrc in every feed offer section, checked by the page) and as many
// server SDPs of each kind as sdps says, no page error.
func sylkFinalChecks(t *testing.T, ps []*sylkPage, sdps map[string]int) {
	t.Helper()
	// sylkrtc.js pings 5 s after the socket opens: wait for one answer.
	err := waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return err
			}
			if in.Pings.Acked+in.Pings.Errors == 0 {
				return fmt.Errorf("%s: no ping answered yet (%d sent)", p.name, in.Pings.Sent)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	for _, p := range ps {
		in, err := p.info()
		if err != nil {
			t.Fatal(err)
		}
		if in.Protocol != "sylkRTC-2" {
			t.Errorf("%s: subprotocol %q, want sylkRTC-2", p.name, in.Protocol)
		}
		if !in.Ready || in.Closed != "" {
			t.Errorf("%s: socket ready %v, closed %q", p.name, in.Ready, in.Closed)
		}
		if in.Pings.MaxMissed > 2 || in.Pings.Errors > 0 {
			t.Errorf("%s: pings %+v: want every one acked", p.name, in.Pings)
		}
		if in.Trickles.Errors > 0 || in.Trickles.Acked != in.Trickles.Sent || in.Trickles.Ends == 0 {
			t.Errorf("%s: trickles %+v: want every one acked, and candidates: [] sent", p.name, in.Trickles)
		}
		if in.ClientSdpCandidates != 0 {
			t.Errorf("%s: the page sent %d candidates inside its SDPs; sylkrtc.js sends none (the test page is not faithful)", p.name, in.ClientSdpCandidates)
		}
		kinds := map[string]int{}
		for _, s := range in.ServerSdps {
			kinds[s.What]++
			if s.Candidates == 0 || len(s.NoSsrc) > 0 {
				t.Errorf("%s: server SDP %s: %d candidates, m-sections without a=ssrc %v", p.name, s.What, s.Candidates, s.NoSsrc)
			}
		}
		if !maps.Equal(kinds, sdps) {
			t.Errorf("%s: server SDPs checked %v, want %v", p.name, kinds, sdps)
		}
		if in.UnknownTransactions > 0 {
			t.Errorf("%s: %d replies with a transaction the page never sent", p.name, in.UnknownTransactions)
		}
		if len(in.Errors) > 0 {
			t.Errorf("%s: page errors:\n  %s", p.name, strings.Join(in.Errors, "\n  "))
		}
		t.Logf("%s: pings %d sent, %d acked; trickles %d sent, %d acked (%d ends); %d server SDPs checked", p.name,
			in.Pings.Sent, in.Pings.Acked, in.Trickles.Sent, in.Trickles.Acked, in.Trickles.Ends, len(in.ServerSdps))
	}
}

// TestSylkCallInChromium: two pages running a Sylk client of their own
// (testdata/sylk.js, sylkRTC-2 as sylkrtc.js speaks it) register two local
// accounts (SYLK_ACCOUNTS, HA1 checked) on the router's /webrtcgateway/ws;
// alice calls bob, both hear (totalAudioEnergy grows) and see (framesDecoded
// grows) each other, alice hangs up; then bob calls alice, both hear each
// other, and alice, the callee, hangs up. Both sides of each call end with
// 200 OK. An account the file does not know is refused.
func TestSylkCallInChromium(t *testing.T) {
	needBrowser(t, "espeak-ng", "sox", "soxi")
	t0 := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }
	_, ps := sylkSetup(t, "alice@example.com", "bob@example.com")
	alice, bob := ps[0], ps[1]
	phase("alice and bob registered")

	// An account the accounts file does not have: failed, with a reason.
	var refused string
	err := alice.eval(30*time.Second, `sylk.addAccount('mallory@example.com', '0123456789abcdef0123456789abcdef').then(() => 'registered', (e) => e.message)`, &refused)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(refused, "registration failed") || !strings.Contains(refused, "403") {
		t.Errorf("an unknown account: %q, want registration failed with 403", refused)
	}

	call := func(caller, callee *sylkPage, n int) (callerID, calleeID string) {
		t.Helper()
		if err := caller.eval(30*time.Second, fmt.Sprintf(`sylk.call(%q, %q)`, caller.account, callee.account), &callerID); err != nil {
			t.Fatal(err)
		}
		// Both sides established, their connections up.
		err := waitFor(60*time.Second, 250*time.Millisecond, func() error {
			for _, p := range []*sylkPage{caller, callee} {
				in, err := p.info()
				if err != nil {
					return err
				}
				if len(in.Calls) != n {
					return fmt.Errorf("%s: %d calls, want %d", p.name, len(in.Calls), n)
				}
				c := in.Calls[n-1]
				if p == callee {
					calleeID = c.ID
				}
				if slices.Contains(c.States, "terminated") {
					return errStop{fmt.Errorf("%s: call terminated: %s (states %v)", p.name, c.Reason, c.States)}
				}
				if !slices.Contains(c.States, "established") || c.State != "connected" {
					return fmt.Errorf("%s: call states %v, connection %s", p.name, c.States, c.State)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("call %s → %s: %v", caller.name, callee.name, err)
		}
		first, last, err := waitMedia(60*time.Second, true, func() ([]mediaSample, error) {
			var out []mediaSample
			for _, p := range []*sylkPage{caller, callee} {
				in, err := p.info()
				if err != nil {
					return nil, err
				}
				out = append(out, in.Calls[n-1].sylkMedia.sample(p.name+" receives"))
			}
			return out, nil
		})
		if err != nil {
			t.Fatalf("call %s → %s: %v", caller.name, callee.name, err)
		}
		logMedia(t, first, last)
		for _, p := range []*sylkPage{caller, callee} {
			in, err := p.info()
			if err != nil {
				t.Fatal(err)
			}
			c := in.Calls[n-1]
			loopbackPair(t, p.name+"'s call", c.Local, c.Remote)
			switch p {
			case caller:
				if c.Direction != "outgoing" || !c.SdpInAccepted || c.Peer != callee.account {
					t.Errorf("%s: call %s to %s, answer SDP in accepted %v", p.name, c.Direction, c.Peer, c.SdpInAccepted)
				}
			case callee:
				if c.Direction != "incoming" || c.Peer != caller.account || !slices.Equal(c.MediaTypes, []string{"audio", "video"}) {
					t.Errorf("%s: call %s from %s, sendrecv media %v; want incoming from %s with audio and video",
						p.name, c.Direction, c.Peer, c.MediaTypes, caller.account)
				}
			}
		}
		return callerID, calleeID
	}
	hangup := func(by *sylkPage, id string, n int) {
		t.Helper()
		if err := by.eval(30*time.Second, fmt.Sprintf(`sylk.hangup(%q).then(() => true)`, id), nil); err != nil {
			t.Fatal(err)
		}
		err := waitFor(30*time.Second, 250*time.Millisecond, func() error {
			for _, p := range []*sylkPage{alice, bob} {
				in, err := p.info()
				if err != nil {
					return err
				}
				c := in.Calls[n-1]
				if !slices.Contains(c.States, "terminated") {
					return fmt.Errorf("%s: call states %v", p.name, c.States)
				}
				if c.Reason != "200 OK" {
					return errStop{fmt.Errorf("%s: call terminated with %q, want 200 OK", p.name, c.Reason)}
				}
			}
			return nil
		})
		if err != nil {
			t.Errorf("hang-up by %s: %v", by.name, err)
		}
	}

	id, _ := call(alice, bob, 1)
	phase("alice → bob: both hear and see each other")
	hangup(alice, id, 1)
	phase("alice hung up: both terminated 200 OK")
	_, id = call(bob, alice, 2)
	phase("bob → alice: both hear and see each other")
	hangup(alice, id, 2)
	phase("alice (the callee) hung up: both terminated 200 OK")
	sylkFinalChecks(t, ps, map[string]int{"accepted (call)": 1, "incoming-session": 1})
	phase("done")
}

// TestSylkRoomInChromium: three pages running the Sylk client of
// testdata/sylk.js register three accounts and join one video room; each
// attaches a feed of every other publisher (from initial-publishers or
// publishers-joined), checks that every feed offer has candidates and
// a=ssrc in every m-section, and sees (framesDecoded grows on all six
// feeds) and hears (totalAudioEnergy grows) the others. Publisher ids are
// the same on every page. Then one page leaves: it gets session-state
// terminated before the ack, and the others get publishers-left with its id.
func TestSylkRoomInChromium(t *testing.T) {
	needBrowser(t, "espeak-ng", "sox", "soxi")
	t0 := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }
	_, ps := sylkSetup(t, "alice@example.com", "bob@example.com", "carol@example.com")
	phase("three accounts registered")

	roomURI := "room-" + randHex(4) + "@conference.example.com"
	confs := map[*sylkPage]string{}
	for _, p := range ps {
		var id string
		if err := p.eval(30*time.Second, fmt.Sprintf(`sylk.join(%q, %q)`, p.account, roomURI), &id); err != nil {
			t.Fatal(err)
		}
		confs[p] = id
	}

	// Every page: the room established, two feeds, each from another page.
	err := waitFor(60*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return err
			}
			if len(in.Conferences) != 1 {
				return errStop{fmt.Errorf("%s: %d conferences", p.name, len(in.Conferences))}
			}
			c := in.Conferences[0]
			if slices.Contains(c.States, "terminated") {
				return errStop{fmt.Errorf("%s: the room session ended: %v", p.name, c.States)}
			}
			if !slices.Contains(c.States, "established") {
				return fmt.Errorf("%s: room states %v, connection %s", p.name, c.States, c.State)
			}
			if len(in.Feeds) != len(ps)-1 {
				return fmt.Errorf("%s: %d feeds, want %d", p.name, len(in.Feeds), len(ps)-1)
			}
			for _, f := range in.Feeds {
				if f.URI == p.account {
					return errStop{fmt.Errorf("%s: a feed of itself", p.name)}
				}
				if f.State != "connected" {
					return fmt.Errorf("%s: feed of %s: states %v, connection %s", p.name, f.URI, f.States, f.State)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	phase("every page has its room session established and two feeds connected")

	first, last, err := waitMedia(60*time.Second, true, func() ([]mediaSample, error) {
		var out []mediaSample
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return nil, err
			}
			for _, f := range in.Feeds {
				out = append(out, f.sylkMedia.sample(p.name+" ← "+strings.Split(f.URI, "@")[0]))
			}
		}
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	logMedia(t, first, last)
	phase("every page sees and hears the two others")

	// Every feed established and its video element showing frames (the
	// page sets it at ontrack; its size is known after the first frame).
	err = waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return err
			}
			for _, f := range in.Feeds {
				if !slices.Contains(f.States, "established") || f.VideoWidth == 0 {
					return fmt.Errorf("%s: feed of %s: states %v (want feed-established), video element %d px wide", p.name, f.URI, f.States, f.VideoWidth)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// Publisher ids: opaque, and the same for a participant on every page.
	ids := map[string]map[string]bool{} // uri → ids seen
	for _, p := range ps {
		in, err := p.info()
		if err != nil {
			t.Fatal(err)
		}
		c := in.Conferences[0]
		if c.Accepted == nil || !c.Accepted.Audio || !c.Accepted.Video {
			t.Errorf("%s: accepted %+v, want audio and video", p.name, c.Accepted)
		}
		loopbackPair(t, p.name+"'s room session", c.Local, c.Remote)
		if c.AudioSent == 0 || c.VideoSent == 0 {
			t.Errorf("%s: publishing %d audio, %d video packets", p.name, c.AudioSent, c.VideoSent)
		}
		for _, f := range in.Feeds {
			loopbackPair(t, p.name+"'s feed of "+f.URI, f.Local, f.Remote)
			if ids[f.URI] == nil {
				ids[f.URI] = map[string]bool{}
			}
			ids[f.URI][f.Publisher] = true
		}
	}
	pubID := map[string]string{}
	for uri, set := range ids {
		if len(set) != 1 {
			t.Errorf("%s is known by %d publisher ids across pages, want one: %v", uri, len(set), set)
		}
		for id := range set {
			pubID[uri] = id
		}
	}

	// The last page leaves.
	leaver, stay := ps[len(ps)-1], ps[:len(ps)-1]
	if err := leaver.eval(30*time.Second, fmt.Sprintf(`sylk.leave(%q).then(() => true)`, confs[leaver]), nil); err != nil {
		t.Fatal(err)
	}
	in, err := leaver.info()
	if err != nil {
		t.Fatal(err)
	}
	if c := in.Conferences[0]; !c.TerminatedBeforeAck {
		t.Errorf("%s left: session-state terminated did not come before the ack (states %v)", leaver.name, c.States)
	}
	err = waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range stay {
			in, err := p.info()
			if err != nil {
				return err
			}
			if c := in.Conferences[0]; !slices.Contains(c.Left, pubID[leaver.account]) {
				return fmt.Errorf("%s: publishers-left so far %v, want %q (%s)", p.name, c.Left, pubID[leaver.account], leaver.account)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	phase(leaver.name + " left: the others got publishers-left")
	sylkFinalChecks(t, ps, map[string]int{"accepted (room)": 1, "feed-attached": len(ps) - 1})
	phase("done")
}
