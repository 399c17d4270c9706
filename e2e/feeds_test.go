package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/stages"
)

// feedMsg is the signalling of the feeds page (feedsJS), one JSON object a
// WebSocket message:
//
//	page → server  {"type":"publish","sdp":offer}             the publishing connection
//	server → page  {"type":"answer","sdp":answer}             with all the router's candidates
//	server → page  {"type":"feed","id":N,"from":P,"sdp":offer} participant P's feed, once P has published
//	page → server  {"type":"feed-answer","id":N,"sdp":answer}
//	page → server  {"type":"candidate","id":N,"candidate":{…}} id 0: the publishing connection
//	server → page  {"type":"feed-ended","id":N,"reason":R}    when the feed's Done closes
//	server → page  {"type":"error","reason":R}
type feedMsg struct {
	Type      string                   `json:"type"`
	ID        int64                    `json:"id,omitempty"`
	From      string                   `json:"from,omitempty"`
	SDP       string                   `json:"sdp,omitempty"`
	Candidate *webrtc.ICECandidateInit `json:"candidate,omitempty"`
	Reason    string                   `json:"reason,omitempty"`
}

// feedServer is a test-only front-end of the feed API: a room.Manager with
// the gate and forwarder pipeline, and a signalling server on 127.0.0.1 that
// serves feedsJS at /page?id=… and its WebSocket at /ws?id=…. Every page is
// a participant of one conversation; its WebSocket closing makes it leave.
type feedServer struct {
	t    *testing.T
	m    *room.Manager
	conv string
	srv  *httptest.Server
	log  *testutil.Buffer
	up   websocket.Upgrader

	nextID atomic.Int64
	wg     sync.WaitGroup // handlers and their goroutines

	mu       sync.Mutex
	closed   bool
	parts    map[string]*room.Participant // in the conversation
	sessions map[*feedSession]struct{}
	feeds    []*feedRecord
	pubs     map[string]*rtc.Peer // publishing connections by participant id
}

// feedRecord is a feed the server made.
type feedRecord struct {
	ID       int64
	Sub, Pub string
	Feed     *room.Feed
}

func startFeedServer(t *testing.T) *feedServer {
	t.Helper()
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))

	reg := pipeline.NewRegistry()
	stages.Register(reg)
	cfg, err := reg.Config(stages.GateKind, stages.ForwarderKind)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := reg.Build(cfg, pipeline.Env{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	m, err := room.New(room.Config{
		Media: rtc.Config{
			ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)},
			// A page that closes its publishing connection is noticed
			// within seconds; keepalives keep an idle feed's ICE alive.
			DisconnectedTimeout: 2 * time.Second,
			FailedTimeout:       2 * time.Second,
			KeepaliveInterval:   500 * time.Millisecond,
		},
		Sink:   pl,
		Logger: logger,
	})
	if err != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = pl.Close(ctx)
		t.Fatal(err)
	}
	s := &feedServer{
		t:        t,
		m:        m,
		conv:     "feeds-" + randHex(4),
		log:      logs,
		parts:    map[string]*room.Participant{},
		sessions: map[*feedSession]struct{}{},
		pubs:     map[string]*rtc.Peer{},
	}
	// Cleanups run last-in first-out: the server's sessions end (their
	// participants leave), then the manager closes, then the pipeline.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Close(ctx); err != nil {
			t.Errorf("close the room manager: %v", err)
		}
		if err := pl.Close(ctx); err != nil {
			t.Errorf("close the pipeline: %v", err)
		}
		if t.Failed() {
			t.Logf("feed server log:\n%s", logs.String())
		}
		saveArtifact(t, "feeds-"+sanitize(t.Name())+".log", []byte(logs.String()))
	})

	mux := http.NewServeMux()
	mux.HandleFunc("/page", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id == "" {
			http.Error(w, "want ?id=", http.StatusBadRequest)
			return
		}
		serveFeedsPage(w, "ws://"+r.Host+"/ws?"+url.Values{"id": {id}}.Encode())
	})
	mux.HandleFunc("/ws", s.serveWS)
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	s.srv = httptest.NewServer(mux) // 127.0.0.1
	t.Cleanup(s.close)
	return s
}

// pageURL is the page of participant id.
func (s *feedServer) pageURL(id string) string {
	return s.srv.URL + "/page?" + url.Values{"id": {id}}.Encode()
}

func (s *feedServer) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "%s test-server: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// close ends every session and waits for the server's goroutines.
func (s *feedServer) close() {
	s.mu.Lock()
	s.closed = true
	var conns []*websocket.Conn
	for ss := range s.sessions {
		conns = append(conns, ss.conn)
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		s.t.Errorf("feed server: sessions did not end within 30s of their sockets closing")
	}
	s.srv.Close()
}

// participant returns participant id, if it is in the conversation.
func (s *feedServer) participant(id string) *room.Participant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parts[id]
}

// publisher returns the publishing connection of participant id, or nil.
func (s *feedServer) publisher(id string) *rtc.Peer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pubs[id]
}

// feedsOf returns the feeds made from pub to sub, oldest first.
func (s *feedServer) feedsOf(sub, pub string) []*feedRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*feedRecord
	for _, r := range s.feeds {
		if r.Sub == sub && r.Pub == pub {
			out = append(out, r)
		}
	}
	return out
}

// allFeeds returns every feed made.
func (s *feedServer) allFeeds() []*feedRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*feedRecord(nil), s.feeds...)
}

// forget drops p from the conversation's list once it has left.
func (s *feedServer) forget(p *room.Participant) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.parts[p.ID] == p {
		delete(s.parts, p.ID)
	}
}

// feedSession is one page's WebSocket: one participant.
type feedSession struct {
	s    *feedServer
	id   string
	conn *websocket.Conn
	wmu  sync.Mutex
	p    *room.Participant
	done chan struct{} // the socket is gone

	mu     sync.Mutex
	queue  []room.Event
	wake   chan struct{}
	feeds  map[int64]*room.Feed
	subbed map[*room.Participant]bool
	pub    *rtc.Peer
}

func (s *feedServer) serveWS(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	if id == "" {
		http.Error(w, "want ?id=", http.StatusBadRequest)
		return
	}
	conn, err := s.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	ss := &feedSession{
		s: s, id: id, conn: conn, done: make(chan struct{}), wake: make(chan struct{}, 1),
		feeds: map[int64]*room.Feed{}, subbed: map[*room.Participant]bool{},
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.sessions[ss] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, ss)
		s.mu.Unlock()
	}()
	ss.run()
}

// run enters the participant, serves the socket until it closes, and
// leaves.
func (ss *feedSession) run() {
	s := ss.s
	defer ss.conn.Close()
	p, err := s.m.Enter(s.conv, room.Identity{ID: ss.id, Claim: claim.Claim{UserID: "user-" + ss.id, ClientID: "client-" + ss.id}}, ss.watch)
	if err != nil {
		ss.send(feedMsg{Type: "error", Reason: "enter: " + err.Error()})
		return
	}
	ss.p = p
	s.mu.Lock()
	var others []*room.Participant
	for _, o := range s.parts {
		others = append(others, o)
	}
	s.parts[ss.id] = p
	s.mu.Unlock()
	s.logf("%s entered", ss.id)
	// Those who published before p entered were not announced to it.
	for _, o := range others {
		if len(o.Tracks()) > 0 {
			ss.watch(room.Event{Kind: room.Published, Participant: o})
		}
	}
	events := make(chan struct{})
	go func() {
		defer close(events)
		ss.events()
	}()
	defer func() {
		close(ss.done)
		<-events
		p.Leave()
		s.forget(p)
		s.logf("%s: socket closed, left", ss.id)
	}()

	for {
		_, data, err := ss.conn.ReadMessage()
		if err != nil {
			return
		}
		var m feedMsg
		if err := json.Unmarshal(data, &m); err != nil {
			ss.send(feedMsg{Type: "error", Reason: "bad message: " + err.Error()})
			continue
		}
		if err := ss.handle(m); err != nil {
			s.logf("%s: %s: %v", ss.id, m.Type, err)
			ss.send(feedMsg{Type: "error", Reason: m.Type + ": " + err.Error()})
		}
	}
}

// watch is the participant's room.Event watcher: it queues, never blocks.
func (ss *feedSession) watch(e room.Event) {
	ss.mu.Lock()
	ss.queue = append(ss.queue, e)
	ss.mu.Unlock()
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// events handles the queued events until the socket is gone.
func (ss *feedSession) events() {
	for {
		select {
		case <-ss.done:
			return
		case <-ss.wake:
		}
		ss.mu.Lock()
		q := ss.queue
		ss.queue = nil
		ss.mu.Unlock()
		for _, e := range q {
			switch e.Kind {
			case room.Published:
				ss.subscribe(e.Participant)
			case room.Left:
				ss.s.logf("%s: told %s left", ss.id, e.Participant.ID)
				ss.s.forget(e.Participant)
			}
		}
	}
}

// subscribe makes the feed of pub and offers it to the page.
func (ss *feedSession) subscribe(pub *room.Participant) {
	s := ss.s
	ss.mu.Lock()
	if ss.subbed[pub] {
		ss.mu.Unlock()
		return
	}
	ss.subbed[pub] = true
	ss.mu.Unlock()
	f, err := ss.p.Subscribe(pub)
	if err != nil {
		s.logf("%s: subscribe to %s: %v", ss.id, pub.ID, err)
		return
	}
	id := s.nextID.Add(1)
	ss.mu.Lock()
	ss.feeds[id] = f
	ss.mu.Unlock()
	s.mu.Lock()
	s.feeds = append(s.feeds, &feedRecord{ID: id, Sub: ss.id, Pub: pub.ID, Feed: f})
	s.mu.Unlock()

	s.wg.Add(1) // this goroutine's session is counted: the count is > 0
	go func() {
		defer s.wg.Done()
		select {
		case <-f.Done():
			reason := fmt.Sprint(f.Err())
			s.logf("feed %d (%s receives %s) ended: %s", id, ss.id, pub.ID, reason)
			ss.send(feedMsg{Type: "feed-ended", ID: id, Reason: reason})
		case <-ss.done:
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		select {
		case <-ss.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	offer, err := f.Peer().Offer(ctx)
	if err != nil || offer == "" {
		s.logf("%s: offer of feed %d: %v", ss.id, id, err)
		f.Close()
		return
	}
	s.logf("feed %d: %s receives %s, offered", id, ss.id, pub.ID)
	ss.send(feedMsg{Type: "feed", ID: id, From: pub.ID, SDP: offer})
}

// publisher returns the participant's publishing connection, made on first
// use.
func (ss *feedSession) publisher() (*rtc.Peer, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.pub != nil {
		return ss.pub, nil
	}
	peer, err := ss.p.Publisher()
	if err != nil {
		return nil, err
	}
	ss.pub = peer
	ss.s.mu.Lock()
	ss.s.pubs[ss.id] = peer
	ss.s.mu.Unlock()
	return peer, nil
}

func (ss *feedSession) feed(id int64) (*room.Feed, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f, ok := ss.feeds[id]
	if !ok {
		return nil, fmt.Errorf("no feed %d", id)
	}
	return f, nil
}

// handle serves one message of the page.
func (ss *feedSession) handle(m feedMsg) error {
	switch m.Type {
	case "publish":
		peer, err := ss.publisher()
		if err != nil {
			return err
		}
		if _, err := peer.Answer(m.SDP); err != nil {
			return err
		}
		ss.s.wg.Add(1)
		go func() {
			defer ss.s.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			answer := peer.WaitGathered(ctx)
			ss.s.logf("%s: publishing connection answered", ss.id)
			ss.send(feedMsg{Type: "answer", SDP: answer})
		}()
		return nil
	case "feed-answer":
		f, err := ss.feed(m.ID)
		if err != nil {
			return err
		}
		return f.Peer().SetAnswer(m.SDP)
	case "candidate":
		if m.Candidate == nil {
			return errors.New("no candidate")
		}
		if m.ID == 0 {
			peer, err := ss.publisher()
			if err != nil {
				return err
			}
			return peer.AddCandidate(*m.Candidate)
		}
		f, err := ss.feed(m.ID)
		if err != nil {
			return err
		}
		return f.Peer().AddCandidate(*m.Candidate)
	}
	return fmt.Errorf("unknown message type %q", m.Type)
}

// send writes one message; errors (the page gone) are ignored.
func (ss *feedSession) send(m feedMsg) {
	ss.wmu.Lock()
	defer ss.wmu.Unlock()
	_ = ss.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_ = ss.conn.WriteJSON(m)
}

// feedView is what feedInfo() in feedsJS reports of one feed.
type feedView struct {
	ID               int64    `json:"id"`
	From             string   `json:"from"`
	State            string   `json:"state"`
	Ended            string   `json:"ended"`
	Tracks           []string `json:"tracks"`
	VideoWidth       int      `json:"videoWidth"`
	VideoHeight      int      `json:"videoHeight"`
	VideoPaused      bool     `json:"videoPaused"`
	AudioPaused      bool     `json:"audioPaused"`
	FramesDecoded    int      `json:"framesDecoded"`
	KeyFramesDecoded int      `json:"keyFramesDecoded"`
	VideoPackets     int      `json:"videoPackets"`
	FrameWidth       int      `json:"frameWidth"`
	Codec            string   `json:"codec"`
	AudioPackets     int      `json:"audioPackets"`
	TotalAudioEnergy float64  `json:"totalAudioEnergy"`
	FramesReceived   int      `json:"framesReceived"`
	FramesDropped    int      `json:"framesDropped"`
	FreezeCount      int      `json:"freezeCount"`
	FreezeSeconds    float64  `json:"freezeSeconds"`
	PLICount         int      `json:"pliCount"`
	NACKCount        int      `json:"nackCount"`
	VideoPacketsLost int      `json:"videoPacketsLost"`
	Local            string   `json:"local"`
	Remote           string   `json:"remote"`
	StatsError       string   `json:"statsError"`
}

type pubView struct {
	State         string  `json:"state"`
	FramesEncoded int     `json:"framesEncoded"`
	VideoPackets  int     `json:"videoPackets"`
	AudioPackets  int     `json:"audioPackets"`
	KeyFrames     int     `json:"keyFramesEncoded"`
	FPS           float64 `json:"framesPerSecond"`
	FrameWidth    int     `json:"frameWidth"`
	PLIReceived   int     `json:"pliReceived"`
	NACKReceived  int     `json:"nackReceived"`
	Limitation    string  `json:"qualityLimitation"`
	TargetBitrate float64 `json:"targetBitrate"`
	Local         string  `json:"local"`
	Remote        string  `json:"remote"`
}

type pageView struct {
	Feeds []feedView `json:"feeds"`
	Pub   pubView    `json:"pub"`
	Ended []struct {
		ID     int64  `json:"id"`
		Reason string `json:"reason"`
	} `json:"ended"`
	Errors []string `json:"errors"`
}

const pageViewJS = `(async () => ({
  feeds: typeof feedInfo === 'function' ? await feedInfo() : [],
  pub: typeof pubInfo === 'function' ? await pubInfo() : { state: 'no page' },
  ended: window.ended || [],
  errors: window.errors || [],
}))()`

func (tb *tab) feedsView() (pageView, error) {
	var v pageView
	err := tb.eval(5*time.Second, pageViewJS, &v)
	return v, err
}

// live returns the page's feed of participant from that has not ended.
func (v pageView) live(from string) (feedView, error) {
	var out []feedView
	for _, f := range v.Feeds {
		if f.From == from && f.Ended == "" {
			out = append(out, f)
		}
	}
	if len(out) != 1 {
		return feedView{}, fmt.Errorf("%d live feeds of %s (feeds: %+v)", len(out), from, v.Feeds)
	}
	return out[0], nil
}

func (v pageView) endedFeed(id int64) (string, bool) {
	for _, e := range v.Ended {
		if e.ID == id {
			return e.Reason, true
		}
	}
	return "", false
}

// minFrames is how many more frames a feed must decode to count as video
// that plays: a second and a half of the fake camera's 20-30 fps.
const minFrames = 30

// feedMedia waits until tb shows and hears the feed of participant from:
// its video decodes (a keyframe, a picture size), its audio is played with
// energy; then until it has decoded minFrames more frames and received
// more audio packets and minEnergy more energy. It returns both samples.
func feedMedia(t *testing.T, tb *tab, from string) (first, last feedView) {
	t.Helper()
	const timeout = 30 * time.Second
	ready := func(f feedView) error {
		switch {
		case f.State == "failed" || f.State == "closed":
			return errStop{fmt.Errorf("feed %d of %s: connection %s", f.ID, from, f.State)}
		case f.KeyFramesDecoded < 1 || f.FramesDecoded == 0 || f.VideoWidth == 0:
			return fmt.Errorf("feed %d of %s (%s): video not decoding: %d frames, %d keyframes, <video> %dx%d, %d packets",
				f.ID, from, f.State, f.FramesDecoded, f.KeyFramesDecoded, f.VideoWidth, f.VideoHeight, f.VideoPackets)
		case f.AudioPackets == 0 || f.TotalAudioEnergy < minEnergy:
			return fmt.Errorf("feed %d of %s: audio not heard: %d packets, energy %g", f.ID, from, f.AudioPackets, f.TotalAudioEnergy)
		}
		return nil
	}
	var view pageView
	err := waitFor(timeout, 200*time.Millisecond, func() error {
		var err error
		if view, err = tb.feedsView(); err != nil {
			return err
		}
		if len(view.Errors) > 0 {
			return errStop{fmt.Errorf("page errors: %v", view.Errors)}
		}
		if first, err = view.live(from); err != nil {
			return err
		}
		return ready(first)
	})
	if err != nil {
		t.Fatalf("%s does not show and hear %s: %v\npublishing: %+v", tb.name, from, err, view.Pub)
	}
	err = waitFor(timeout, 200*time.Millisecond, func() error {
		var err error
		if view, err = tb.feedsView(); err != nil {
			return err
		}
		if last, err = view.live(from); err != nil {
			return errStop{err}
		}
		if last.ID != first.ID {
			return errStop{fmt.Errorf("feed of %s changed from %d to %d", from, first.ID, last.ID)}
		}
		if err := ready(last); err != nil {
			return errStop{err}
		}
		if last.FramesDecoded < first.FramesDecoded+minFrames {
			return fmt.Errorf("feed %d of %s: %d → %d frames decoded", last.ID, from, first.FramesDecoded, last.FramesDecoded)
		}
		if last.AudioPackets <= first.AudioPackets || last.TotalAudioEnergy < first.TotalAudioEnergy+minEnergy {
			return fmt.Errorf("feed %d of %s: audio not growing: packets %d → %d, energy %g → %g", last.ID, from,
				first.AudioPackets, last.AudioPackets, first.TotalAudioEnergy, last.TotalAudioEnergy)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: the feed of %s does not play on: %v", tb.name, from, err)
	}
	if last.Local != "127.0.0.1" || last.Remote != "127.0.0.1" {
		t.Errorf("%s: feed %d's selected candidate pair %s ↔ %s, want loopback on both ends", tb.name, last.ID, last.Local, last.Remote)
	}
	if view.Pub.Local != "127.0.0.1" || view.Pub.Remote != "127.0.0.1" {
		t.Errorf("%s: publishing connection's selected pair %s ↔ %s, want loopback on both ends", tb.name, view.Pub.Local, view.Pub.Remote)
	}
	t.Logf("%s receives %s on feed %d (%s, %dx%d): framesDecoded %d → %d, keyFramesDecoded %d; audio packets %d → %d, totalAudioEnergy %.4f → %.4f",
		tb.name, from, last.ID, last.Codec, last.VideoWidth, last.VideoHeight, first.FramesDecoded, last.FramesDecoded, last.KeyFramesDecoded,
		first.AudioPackets, last.AudioPackets, first.TotalAudioEnergy, last.TotalAudioEnergy)
	t.Logf("%s: feed %d video: %d frames received, %d dropped, %d freezes (%.2fs), %d PLIs and %d NACKs sent, %d packets lost",
		tb.name, last.ID, last.FramesReceived, last.FramesDropped, last.FreezeCount, last.FreezeSeconds, last.PLICount, last.NACKCount, last.VideoPacketsLost)
	return first, last
}

// logSending logs what the pages' publishing connections sent, and what the
// router's down-tracks of the feeds to pages sent.
func logSending(t *testing.T, s *feedServer, tabs ...*tab) {
	t.Helper()
	for _, tb := range tabs {
		v, err := tb.feedsView()
		if err != nil {
			t.Logf("%s: %v", tb.name, err)
			continue
		}
		p := v.Pub
		t.Logf("%s publishes (%s): %d frames encoded (%d keyframes), %.0f fps at width %d, %d PLIs and %d NACKs received, quality limitation %q, target %.0f kbit/s",
			tb.name, p.State, p.FramesEncoded, p.KeyFrames, p.FPS, p.FrameWidth, p.PLIReceived, p.NACKReceived, p.Limitation, p.TargetBitrate/1000)
	}
	for _, r := range s.allFeeds() {
		var parts []string
		for _, d := range r.Feed.Peer().DownTracks() {
			n, b, w := d.Stats()
			parts = append(parts, fmt.Sprintf("%s %d packets %d bytes, %d held for a keyframe", d.Kind(), n, b, w))
		}
		t.Logf("router, feed %d (%s receives %s): %s", r.ID, r.Sub, r.Pub, strings.Join(parts, "; "))
	}
	t.Logf("router: %d keyframe requests to publishers", s.m.Stats().KeyframeRequests)
}

// feedEnded waits until feed rec has ended on the server with an error
// whose text contains want, and the page tb was told.
func feedEnded(t *testing.T, tb *tab, rec *feedRecord, want string) {
	t.Helper()
	const timeout = 30 * time.Second
	select {
	case <-rec.Feed.Done():
	case <-time.After(timeout):
		t.Fatalf("feed %d (%s receives %s) did not end within %v", rec.ID, rec.Sub, rec.Pub, timeout)
	}
	if err := rec.Feed.Err(); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("feed %d (%s receives %s) ended with %v, want an error saying %q", rec.ID, rec.Sub, rec.Pub, err, want)
	}
	select {
	case <-rec.Feed.Peer().Done():
	case <-time.After(timeout):
		t.Errorf("feed %d ended, its connection still open after %v", rec.ID, timeout)
	}
	err := waitFor(timeout, 100*time.Millisecond, func() error {
		v, err := tb.feedsView()
		if err != nil {
			return err
		}
		if _, ok := v.endedFeed(rec.ID); !ok {
			return fmt.Errorf("%s was not told feed %d ended (told: %+v)", tb.name, rec.ID, v.Ended)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("feed %d (%s receives %s) ended: %v; page %s told", rec.ID, rec.Sub, rec.Pub, rec.Feed.Err(), tb.name)
}

// one returns the only feed from pub to sub.
func (s *feedServer) one(t *testing.T, sub, pub string) *feedRecord {
	t.Helper()
	fs := s.feedsOf(sub, pub)
	if len(fs) != 1 {
		t.Fatalf("server made %d feeds of %s for %s, want 1", len(fs), pub, sub)
	}
	return fs[0]
}

// TestFeedsInChromium: two pages publish the fake camera and microphone
// through the feed API (room.Participant, room.Feed) behind a test-only
// signalling server, and each shows the other's video and hears its audio.
// Then the feeds end: when the server makes one participant Leave, and when
// a page closes its publishing connection.
func TestFeedsInChromium(t *testing.T) {
	needBrowser(t, "espeak-ng", "sox", "soxi")
	t0 := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }

	dir := t.TempDir()
	speechA := &speech{Voice: "en-gb", Lead: 0.2, Gap: 0.4, Trail: 0.4, Phrases: []string{"alpha bravo charlie", "delta echo"}}
	speechB := &speech{Voice: "en-us", Lead: 0.2, Gap: 0.4, Trail: 0.4, Phrases: []string{"one two three", "four five six"}}
	makeSpeech(t, dir, "feeds-a", speechA)
	makeSpeech(t, dir, "feeds-b", speechB)

	s := startFeedServer(t)
	bs := startBrowsers(t, map[string]string{"A": speechA.Path, "B": speechB.Path}) // looping
	phase("feed server and browsers started")

	open := func(b *browser, name, id string) *tab {
		t.Helper()
		tb, err := b.open(name, s.pageURL(id), true)
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	tabA := open(bs["A"], "A", "A")
	tabB := open(bs["B"], "B", "B")

	// 1. Each page shows and hears the other.
	feedMedia(t, tabA, "B")
	feedMedia(t, tabB, "A")
	phase("A and B show and hear each other")
	logSending(t, s, tabA, tabB)
	ab, ba := s.one(t, "A", "B"), s.one(t, "B", "A")
	if n := len(s.allFeeds()); n != 2 {
		t.Errorf("server made %d feeds for two participants, want 2", n)
	}
	st := s.m.Stats()
	if st.TWCCSent == 0 {
		t.Error("the router sent the publishers no transport-wide congestion control feedback: their encoders cannot adapt")
	} else {
		t.Logf("router: %d TWCC feedback packets sent to the publishers", st.TWCCSent)
	}
	// Chromium's AES-CM audio and video reach the tracks on the direct
	// ingress path, and the TWCC above is made from what it took.
	if st.IngressDirect == 0 {
		t.Error("no packet of the browsers took the direct ingress path")
	}
	t.Logf("router: %d packets on the direct ingress path, %d left to pion, %d replays", st.IngressDirect, st.IngressFallback, st.IngressReplays)

	// 2. The server makes A leave: the feeds of A and to A end, and both
	// pages are told.
	pa := s.participant("A")
	if pa == nil {
		t.Fatal("A is not in the conversation")
	}
	pa.Leave()
	feedEnded(t, tabB, ba, "publisher left")
	feedEnded(t, tabA, ab, "subscriber left")
	if p := s.publisher("A"); p == nil {
		t.Error("A had no publishing connection")
	} else {
		select {
		case <-p.Done():
		case <-time.After(30 * time.Second):
			t.Error("A left; its publishing connection is still open after 30s")
		}
	}
	if s.m.Conversation(s.conv) == nil {
		t.Error("the conversation ended while B is still in it")
	}
	phase("A left: both feeds ended")

	// 3. A comes back as A2 (the page reloads: a new participant) and the
	// two see each other again.
	if err := chromedp.Do(tabA.ctx, chromedp.Navigate(s.pageURL("A2"))); err != nil {
		t.Fatal(err)
	}
	feedMedia(t, tabA, "B")
	feedMedia(t, tabB, "A2")
	phase("A2 and B show and hear each other")
	logSending(t, s, tabA, tabB)
	a2b, ba2 := s.one(t, "A2", "B"), s.one(t, "B", "A2")
	if s.participant("A") != nil {
		t.Error("A is still listed in the conversation after it left")
	}

	// 4. B closes its publishing connection: the router notices, B leaves,
	// and the feeds of B and to B end.
	if err := tabB.eval(5*time.Second, `window.pub.close()`, nil); err != nil {
		t.Fatal(err)
	}
	closedAt := time.Now()
	feedEnded(t, tabA, a2b, "publisher left")
	t.Logf("A2's feed of B ended %v after B's page closed its publishing connection", time.Since(closedAt).Round(time.Millisecond))
	feedEnded(t, tabB, ba2, "subscriber left")
	if p := s.publisher("B"); p == nil {
		t.Error("B had no publishing connection")
	} else {
		select {
		case <-p.Done():
		default:
			t.Error("B's feeds ended; its publishing connection is still open")
		}
	}
	err := waitFor(30*time.Second, 100*time.Millisecond, func() error {
		if s.participant("B") != nil {
			return errors.New("B still in the conversation")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	// Every feed made has ended, and no page reported an error.
	for _, r := range s.allFeeds() {
		if r.Feed.Err() == nil {
			t.Errorf("feed %d (%s receives %s) has not ended", r.ID, r.Sub, r.Pub)
		}
	}
	for _, tb := range []*tab{tabA, tabB} {
		v, err := tb.feedsView()
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Errors) > 0 {
			t.Errorf("%s: page errors: %v", tb.name, v.Errors)
		}
	}
	phase("B closed its publishing connection: its feeds ended")
}
