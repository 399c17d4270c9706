package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// arbMedia is what testdata/arbiter.js reports of one peer connection.
type arbMedia struct {
	State            string
	ICE              string
	AudioPackets     int
	TotalAudioEnergy float64
	FramesDecoded    int
	VideoPackets     int
	FrameWidth       int
	AudioSent        int
	VideoSent        int
	Local, Remote    string
}

// arbInfo is window.arb.info() of testdata/arbiter.js.
type arbInfo struct {
	ID, RoomID      string
	HTTP            []string
	Errors          []string
	ServerErrors    []json.RawMessage
	Wrapped         int
	OfferCandidates int
	WS, Closed      string
	Dropped         int
	Disconnects     []string
	Chats           []struct{ ID, Sender, Content string }
	FeatureMsgs     int
	ChatState       string
	FeaturesState   string
	Producer        *arbMedia
	Consumers       []struct {
		Peer, Receiver string
		Offers         int
		Tracks         []string
		Features       *struct{ Audio, Video bool }
		Shown          bool
		VideoWidth     int
		arbMedia
	}
	Forgotten []struct{ Peer, State, ICE, DTLS string }
}

// arbPage is one tab running testdata/arbiter.js.
type arbPage struct {
	*tab
	id string
}

func (p *arbPage) info() (arbInfo, error) {
	var in arbInfo
	err := p.eval(10*time.Second, `arb.info()`, &in)
	return in, err
}

// createRoom is what Arbiter's deploy tool does: POST /createRoom.
func createRoom(t *testing.T, rt *router) string {
	t.Helper()
	resp, err := http.Post(rt.HTTP+"/createRoom", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Message, RoomID string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.RoomID == "" {
		t.Fatalf("POST /createRoom: %s %+v %v", resp.Status, body, err)
	}
	return body.RoomID
}

// TestArbiterRoomInChromium: three pages running an Arbiter client of their
// own (testdata/arbiter.js, what Arbiter's React client does), served from
// another origin than the router, the only origin ARBITER_ORIGINS allows,
// find their room by their path through the router's room API at the same
// time (getRoomId 404, claimRoom, getRoomId, or getRoomId 200 after another
// page's claim: one room for the path), join it
// on /arbiter/ws (identify, producer offer without candidates, trickle,
// answered consumer offers), get every remote participant's features, and
// see (framesDecoded grows on all six consumers) and hear (after unmuting,
// totalAudioEnergy grows) each other; chat is relayed. Then one page
// closes: the others get clientDisconnect with its id, and the consumers
// they forget are closed by the router.
func TestArbiterRoomInChromium(t *testing.T) {
	needBrowser(t, "espeak-ng", "sox", "soxi")
	t0 := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }

	dir := t.TempDir()
	sp := &speech{Voice: "en-us", Lead: 0.2, Gap: 0.4, Trail: 0.4, Phrases: []string{"one two three", "four five six"}}
	makeSpeech(t, dir, "arbiter", sp)
	pages := frontendPages(t) // the customer's site: its own origin
	rt := startRouterEnv(t, "ARBITER_ORIGINS="+pages.URL)
	if pages.URL == rt.HTTP {
		t.Fatal("the pages and the router share an origin")
	}
	// Two free rooms, as the deploy tool makes them: the three claims of
	// one path must end in one of them.
	created := []string{createRoom(t, rt), createRoom(t, rt)}
	b, err := newBrowser(t, "arbiter", sp.Path) // looping
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.open("blank", pages.URL+"/blank", true); err != nil { // the browser's first tab, never closed
		t.Fatal(err)
	}
	phase("router, rooms and browser ready")

	urlPath := "/arbiter/room-" + randHex(4)
	u := pages.URL + urlPath + "?api=" + rt.HTTP + "&signal=" + rt.WS + "/arbiter/ws"
	var ps []*arbPage
	var tabs []*tab
	dumpPagesOnFailure(t, `arb.info()`, func() []*tab { return tabs })
	for _, name := range []string{"P1", "P2", "P3"} {
		tb, err := b.open(name, u, false)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, &arbPage{tab: tb})
		tabs = append(tabs, tb)
	}
	page := func(tb *tab) *arbPage {
		for _, p := range ps {
			if p.tab == tb {
				return p
			}
		}
		return nil
	}
	// The three find the room at once (the room API, cross-origin), then
	// connect.
	err = evalAll(tabs, func(tb *tab) error {
		var room string
		if err := tb.eval(30*time.Second, `arb.findRoom()`, &room); err != nil {
			return err
		}
		return tb.eval(10*time.Second, `arb.connect().then(() => arb.id)`, &page(tb).id)
	})
	if err != nil {
		t.Fatal(err)
	}
	var room string
	claims := 0
	for _, p := range ps {
		in, err := p.info()
		if err != nil {
			t.Fatal(err)
		}
		if room == "" {
			room = in.RoomID
		}
		if in.RoomID != room || !slices.Contains(created, in.RoomID) {
			t.Fatalf("%s is in room %q; want one room for the path, among the created %v", p.name, in.RoomID, created)
		}
		if slices.Contains(in.HTTP, "PATCH /claimRoom 200") {
			claims++
		}
		t.Logf("%s (%s): %v", p.name, p.id, in.HTTP)
	}
	// A page that came after a claim finds the room at once (getRoomId 200).
	if claims == 0 {
		t.Error("no page claimed the room")
	}
	phase(fmt.Sprintf("three pages in room %s (%d claimed it)", room, claims))

	// The same page from an origin ARBITER_ORIGINS does not list: the
	// browser gets no CORS grant for the room API and a refused upgrade.
	other := frontendPages(t)
	stranger, err := b.open("stranger", other.URL+urlPath+"?api="+rt.HTTP+"&signal="+rt.WS+"/arbiter/ws", false)
	if err != nil {
		t.Fatal(err)
	}
	var refused struct{ API, WS string }
	err = stranger.eval(30*time.Second, `(async () => ({
	  api: await arb.findRoom().then(() => 'allowed', (e) => e.message),
	  ws: await new Promise((resolve) => {
	    const w = new WebSocket(window.CONFIG.signal);
	    w.onopen = () => { w.close(); resolve('open'); };
	    w.onerror = () => resolve('refused');
	  }),
	}))()`, &refused)
	if err != nil {
		t.Fatal(err)
	}
	if refused.API == "allowed" || refused.WS != "refused" {
		t.Errorf("a page of origin %s (not in ARBITER_ORIGINS): room API %q, gateway %q; want both refused", other.URL, refused.API, refused.WS)
	}
	stranger.cancel()
	t.Logf("a page of another origin: room API %q, gateway %s", refused.API, refused.WS)

	// Producers connected; then each user unmutes (the stock UI starts
	// muted).
	err = waitFor(60*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return err
			}
			if in.WS != "open" {
				return errStop{fmt.Errorf("%s: socket %s %s", p.name, in.WS, in.Closed)}
			}
			if in.Producer == nil || in.Producer.State != "connected" {
				return fmt.Errorf("%s: producer %+v", p.name, in.Producer)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := evalAll(tabs, func(tb *tab) error { return tb.eval(5*time.Second, `arb.toggleMic()`, nil) }); err != nil {
		t.Fatal(err)
	}
	phase("producers connected, microphones on")

	consumers := func(p *arbPage, in arbInfo) ([]mediaSample, error) {
		var out []mediaSample
		for _, c := range in.Consumers {
			out = append(out, mediaSample{Name: p.name + " ← " + nameOf(ps, c.Peer), State: c.State,
				Audio: c.AudioPackets, Energy: c.TotalAudioEnergy, Frames: c.FramesDecoded})
		}
		if len(out) != len(ps)-1 {
			return nil, fmt.Errorf("%s: %d consumers, want %d", p.name, len(out), len(ps)-1)
		}
		return out, nil
	}
	first, last, err := waitMedia(60*time.Second, true, func() ([]mediaSample, error) {
		var out []mediaSample
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return nil, err
			}
			cs, err := consumers(p, in)
			if err != nil {
				return nil, err
			}
			out = append(out, cs...)
		}
		return out, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	logMedia(t, first, last)
	phase("every page sees and hears the two others")

	// The router sends each remote participant's features when its
	// consumer connects; the page shows the video only then.
	err = waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps {
			in, err := p.info()
			if err != nil {
				return err
			}
			for _, c := range in.Consumers {
				if c.Features == nil || !c.Features.Video || !c.Features.Audio || !c.Shown || c.VideoWidth == 0 {
					return fmt.Errorf("%s's consumer of %s: features %+v, video shown %v, %d px wide; want audio and video features and a video",
						p.name, nameOf(ps, c.Peer), c.Features, c.Shown, c.VideoWidth)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// One offer per consumer, loopback, chat relayed.
	if err := ps[0].eval(5*time.Second, `arb.sendChat('hello from P1')`, nil); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		in, err := p.info()
		if err != nil {
			t.Fatal(err)
		}
		if in.OfferCandidates != 0 {
			t.Errorf("%s: the producer offer had %d candidates; Arbiter's client sends none (the page is not faithful)", p.name, in.OfferCandidates)
		}
		loopbackPair(t, p.name+"'s producer", in.Producer.Local, in.Producer.Remote)
		if in.ChatState != "open" || in.FeaturesState != "open" {
			t.Errorf("%s: data channels chat %s, features %s; want both open", p.name, in.ChatState, in.FeaturesState)
		}
		for _, c := range in.Consumers {
			who := p.name + "'s consumer of " + nameOf(ps, c.Peer)
			if c.Peer == p.id || nameOf(ps, c.Peer) == c.Peer {
				t.Errorf("%s: remotePeerId %q is not another participant's id", who, c.Peer)
			}
			loopbackPair(t, who, c.Local, c.Remote)
			if c.Receiver != p.id || c.Offers != 1 {
				t.Errorf("%s: receiver %q (want %q), %d offers (want 1)", who, c.Receiver, p.id, c.Offers)
			}
			if !slices.Contains(c.Tracks, "audio") || !slices.Contains(c.Tracks, "video") {
				t.Errorf("%s: tracks %v, want audio and video on one connection", who, c.Tracks)
			}
		}
	}
	err = waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range ps[1:] {
			in, err := p.info()
			if err != nil {
				return err
			}
			if len(in.Chats) == 0 {
				return fmt.Errorf("%s: no chat message yet", p.name)
			}
			if c := in.Chats[0]; c.ID != ps[0].id || c.Sender != "self" || c.Content != "hello from P1" {
				return errStop{fmt.Errorf("%s: chat %+v, want P1's message verbatim", p.name, c)}
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	phase("features shown and chat relayed")

	// P3 closes its tab: the others get clientDisconnect with its id, and
	// the router closes the consumers they forget (the client does not).
	leaver, stay := ps[2], ps[:2]
	leaver.cancel()
	closed := time.Now()
	err = waitFor(30*time.Second, 250*time.Millisecond, func() error {
		for _, p := range stay {
			in, err := p.info()
			if err != nil {
				return err
			}
			if !slices.Contains(in.Disconnects, leaver.id) {
				return fmt.Errorf("%s: clientDisconnect so far %v", p.name, in.Disconnects)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clientDisconnect of %s reached both others %v after its tab closed", leaver.name, time.Since(closed).Round(time.Millisecond))
	err = waitFor(60*time.Second, 250*time.Millisecond, func() error {
		for _, p := range stay {
			in, err := p.info()
			if err != nil {
				return err
			}
			if len(in.Forgotten) != 1 || in.Forgotten[0].Peer != leaver.id {
				return errStop{fmt.Errorf("%s: forgotten consumers %+v, want the one of %s", p.name, in.Forgotten, leaver.name)}
			}
			if f := in.Forgotten[0]; f.State == "connected" && f.DTLS != "closed" {
				return fmt.Errorf("%s: the forgotten consumer of %s is still up: %+v", p.name, leaver.name, f)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	for _, p := range stay {
		in, err := p.info()
		if err != nil {
			t.Fatal(err)
		}
		if len(in.Consumers) != 1 || in.Consumers[0].State != "connected" {
			t.Errorf("%s: after %s left, consumers %d (want 1, connected)", p.name, leaver.name, len(in.Consumers))
		}
		if len(in.Forgotten) == 1 {
			t.Logf("%s: its forgotten consumer of %s: %+v", p.name, leaver.name, in.Forgotten[0])
		}
		if in.Wrapped != 0 || in.Dropped != 0 || len(in.ServerErrors) != 0 || len(in.Errors) != 0 {
			t.Errorf("%s: %d wrapped frames, %d overlapping offers dropped, server errors %s, page errors:\n  %s",
				p.name, in.Wrapped, in.Dropped, in.ServerErrors, strings.Join(in.Errors, "\n  "))
		}
	}
	phase(leaver.name + " closed: the others got clientDisconnect and its consumers closed")
}

// nameOf names a participant id by its page.
func nameOf(ps []*arbPage, id string) string {
	for _, p := range ps {
		if p.id == id {
			return p.name
		}
	}
	return id
}
