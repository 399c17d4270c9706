package arbiter

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testpeer"
)

// client behaves like Arbiter's browser client (contract section 2): it
// identifies, offers its producer (audio and video on sendrecv
// transceivers made by addTrack, the negotiated data channels chat and
// features) as soon as its local description is set, with no candidate in
// the SDP, trickles its candidates, queues the router's until the answer
// is applied, answers every consumer offer on a connection per
// remotePeerId, and on clientDisconnect only forgets the consumer. It
// records what it receives.
type client struct {
	t      *testing.T
	id     string
	roomID any
	ws     *websocket.Conn
	wmu    sync.Mutex
	api    *webrtc.API
	media  *media

	prod           *testpeer.Peer // the producer, sending media
	prodCands      candidates
	chat, features *webrtc.DataChannel

	mu          sync.Mutex
	consumers   map[string]*remote
	forgotten   []*remote
	disconnects map[string]time.Time
	errs        []string
	feats       map[string]features
	chats       []string
	offers      map[string]int // consumer offers by remotePeerId
	closing     bool

	closeOnce sync.Once
	wg        sync.WaitGroup // the socket reader
}

// remote is a consumer connection: one remote participant's media,
// recorded by its testpeer.Peer.
type remote struct {
	*testpeer.Peer
	cands candidates
}

// candidates holds a connection's remote candidates until its remote
// description is applied, as a browser must, then adds them.
type candidates struct {
	mu       sync.Mutex
	remoteOK bool
	queued   []webrtc.ICECandidateInit
}

// applied adds the queued candidates to pc, and makes add add the later
// ones at once.
func (q *candidates) applied(pc *webrtc.PeerConnection) {
	q.mu.Lock()
	q.remoteOK = true
	queued := q.queued
	q.queued = nil
	q.mu.Unlock()
	for _, ci := range queued {
		_ = pc.AddICECandidate(ci)
	}
}

// add adds ci to pc, or queues it until the remote description is applied.
func (q *candidates) add(pc *webrtc.PeerConnection, ci webrtc.ICECandidateInit) error {
	q.mu.Lock()
	if !q.remoteOK {
		q.queued = append(q.queued, ci)
		q.mu.Unlock()
		return nil
	}
	q.mu.Unlock()
	return pc.AddICECandidate(ci)
}

// dial opens a gateway socket from the customer's origin.
func dial(t *testing.T, r *router) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	h.Set("Origin", customer)
	return websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(r.http.URL, "http")+"/arbiter/ws", h)
}

// join connects a client with id to room roomID, publishing m (nil: the
// client identifies but publishes nothing). Cleanup closes it.
func join(t *testing.T, r *router, id string, roomID any, m *media) *client {
	t.Helper()
	ws, _, err := dial(t, r)
	if err != nil {
		t.Fatalf("%s: dial: %v", id, err)
	}
	c := &client{
		t: t, id: id, roomID: roomID, ws: ws, api: testpeer.API(t), media: m,
		consumers: map[string]*remote{}, disconnects: map[string]time.Time{}, feats: map[string]features{}, offers: map[string]int{},
	}
	t.Cleanup(c.close)
	c.wg.Add(1)
	go c.read()
	c.send("identify", map[string]any{"id": id, "roomId": roomID, "type": "client"})
	if m != nil {
		c.produce()
	}
	return c
}

// send sends one {"action","data"} frame.
func (c *client) send(action string, data any) {
	b, err := json.Marshal(map[string]any{"action": action, "data": data})
	if err != nil {
		c.t.Error(err)
		return
	}
	c.sendRaw(b)
}

// sendRaw sends one text frame as it is.
func (c *client) sendRaw(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.WriteMessage(websocket.TextMessage, b)
}

// handshake sends a handshake of the client's.
func (c *client) handshake(data map[string]any) {
	data["sender"] = c.id
	data["roomId"] = c.roomID
	c.send("handshake", data)
}

// produce makes the producer connection and offers it, as Producer.ts does.
func (c *client) produce() {
	t := c.t
	m, err := testpeer.NewMedia(testpeer.MediaConfig{Frames: c.media.frames, Opus: c.media.opus, StreamID: c.id, AudioFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	if c.prod, err = testpeer.NewPeer(testpeer.Options{API: c.api, Media: m}); err != nil {
		t.Fatal(err)
	}
	pc := c.prod.PC
	negotiated := true
	chatID, featID := uint16(100), uint16(110)
	if c.chat, err = pc.CreateDataChannel("chat", &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &chatID}); err != nil {
		t.Fatal(err)
	}
	if err := c.prod.AddTracks(0); err != nil {
		t.Fatal(err)
	}
	if c.features, err = pc.CreateDataChannel("features", &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &featID}); err != nil {
		t.Fatal(err)
	}
	c.chat.OnMessage(func(m webrtc.DataChannelMessage) {
		c.mu.Lock()
		c.chats = append(c.chats, string(m.Data))
		c.mu.Unlock()
	})
	c.features.OnMessage(func(m webrtc.DataChannelMessage) {
		var f featuresMessage
		if json.Unmarshal(m.Data, &f) != nil {
			c.t.Errorf("%s: features message %q", c.id, m.Data)
			return
		}
		c.mu.Lock()
		c.feats[f.ID] = f.Features
		c.mu.Unlock()
	})
	pc.OnICECandidate(func(ci *webrtc.ICECandidate) {
		if ci != nil { // the end of candidates is not sent
			j := ci.ToJSON()
			c.handshake(map[string]any{"type": "producer", "candidate": j})
		}
	})
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(offer.SDP, "a=candidate") {
		t.Fatal("the test client's offer carries candidates")
	}
	c.handshake(map[string]any{"type": "producer", "description": offer})
	m.Start(nil)
}

// read handles the router's messages until the socket closes.
func (c *client) read() {
	defer c.wg.Done()
	for {
		_, b, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var m struct {
			Type         string                     `json:"type"`
			Receiver     string                     `json:"receiver"`
			RemotePeerID string                     `json:"remotePeerId"`
			ClientID     string                     `json:"clientId"`
			Message      string                     `json:"message"`
			Action       string                     `json:"action"`
			Description  *webrtc.SessionDescription `json:"description"`
			Candidate    *webrtc.ICECandidateInit   `json:"candidate"`
		}
		if err := json.Unmarshal(b, &m); err != nil {
			c.t.Errorf("%s: not JSON from the router: %q", c.id, b)
			continue
		}
		if m.Action != "" {
			c.t.Errorf("%s: a wrapped frame from the router: %s", c.id, b)
		}
		switch m.Type {
		case "producer":
			c.onProducer(m.Description, m.Candidate)
		case "consumer":
			if m.Receiver != c.id {
				c.t.Errorf("%s: consumer message for receiver %q", c.id, m.Receiver)
			}
			c.onConsumer(m.RemotePeerID, m.Description, m.Candidate)
		case "clientDisconnect":
			c.mu.Lock()
			c.disconnects[m.ClientID] = time.Now()
			if r := c.consumers[m.ClientID]; r != nil { // forgotten, not closed
				c.forgotten = append(c.forgotten, r)
				delete(c.consumers, m.ClientID)
			}
			c.mu.Unlock()
		case "error":
			c.mu.Lock()
			c.errs = append(c.errs, m.Message)
			c.mu.Unlock()
		default:
			c.t.Errorf("%s: message of type %q: %s", c.id, m.Type, b)
		}
	}
}

// onProducer applies the router's answer or candidate to the producer.
func (c *client) onProducer(d *webrtc.SessionDescription, ci *webrtc.ICECandidateInit) {
	if d != nil {
		if err := c.prod.PC.SetRemoteDescription(*d); err != nil {
			c.t.Errorf("%s: producer answer: %v", c.id, err)
			return
		}
		c.prodCands.applied(c.prod.PC)
		return
	}
	if ci == nil {
		return
	}
	if ci.SDPMid == nil || *ci.SDPMid != "0" { // a browser matches it against its m-lines
		c.t.Errorf("%s: producer candidate names m-line %v, want the first, 0", c.id, ci.SDPMid)
	}
	if err := c.prodCands.add(c.prod.PC, *ci); err != nil {
		c.t.Errorf("%s: producer candidate: %v", c.id, err)
	}
}

// onConsumer answers a consumer offer, or adds a consumer candidate.
func (c *client) onConsumer(peerID string, d *webrtc.SessionDescription, ci *webrtc.ICECandidateInit) {
	c.mu.Lock()
	r := c.consumers[peerID]
	if r == nil && !c.closing {
		p, err := testpeer.NewPeer(testpeer.Options{API: c.api})
		if err != nil {
			c.mu.Unlock()
			c.t.Error(err)
			return
		}
		r = &remote{Peer: p}
		c.consumers[peerID] = r
		p.PC.OnICECandidate(func(ci *webrtc.ICECandidate) {
			if ci != nil {
				c.handshake(map[string]any{"type": "consumer", "remotePeerId": peerID, "candidate": ci.ToJSON()})
			}
		})
	}
	c.mu.Unlock()
	if r == nil {
		return
	}
	if d != nil {
		if d.Type != webrtc.SDPTypeOffer {
			c.t.Errorf("%s: consumer description of type %s", c.id, d.Type)
			return
		}
		c.mu.Lock()
		c.offers[peerID]++
		c.mu.Unlock()
		if err := r.PC.SetRemoteDescription(*d); err != nil {
			c.t.Errorf("%s: consumer offer: %v", c.id, err)
			return
		}
		answer, err := r.PC.CreateAnswer(nil)
		if err == nil {
			err = r.PC.SetLocalDescription(answer)
		}
		if err != nil {
			c.t.Errorf("%s: consumer answer: %v", c.id, err)
			return
		}
		c.handshake(map[string]any{"type": "consumer", "remotePeerId": peerID, "description": answer})
		r.cands.applied(r.PC)
		return
	}
	if ci == nil {
		return
	}
	_ = r.cands.add(r.PC, *ci)
}

// leave closes the socket without a close frame, as a closing tab does.
func (c *client) leave() { _ = c.ws.Close() }

// close stops the client and closes all its connections.
func (c *client) close() {
	c.closeOnce.Do(func() {
		_ = c.ws.Close()
		c.mu.Lock()
		c.closing = true
		peers := []*testpeer.Peer{}
		for _, r := range c.consumers {
			peers = append(peers, r.Peer)
		}
		for _, r := range c.forgotten {
			peers = append(peers, r.Peer)
		}
		c.mu.Unlock()
		if c.prod != nil {
			peers = append(peers, c.prod)
		}
		for _, p := range peers {
			p.Close()
		}
		c.wg.Wait()
	})
}

// snapshot is what a client has received so far.
type snapshot struct {
	consumers   map[string]received
	disconnects map[string]time.Time
	errs        []string
	feats       map[string]features
	chats       []string
	offers      map[string]int
}

// received is what one consumer has received.
type received struct {
	frames int
	video  []*rtp.Packet
	audio  [][]byte
	state  webrtc.PeerConnectionState
}

// snap returns a copy of what c has received.
func (c *client) snap() snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := snapshot{consumers: map[string]received{}, disconnects: map[string]time.Time{}, feats: map[string]features{}}
	for id, r := range c.consumers {
		frames, _ := r.Counts()
		s.consumers[id] = received{frames: frames, video: r.VideoPackets(), audio: payloads(r.AudioPackets()), state: r.PC.ConnectionState()}
	}
	for k, v := range c.disconnects {
		s.disconnects[k] = v
	}
	for k, v := range c.feats {
		s.feats[k] = v
	}
	s.offers = map[string]int{}
	for k, v := range c.offers {
		s.offers[k] = v
	}
	s.errs = slices.Clone(c.errs)
	s.chats = slices.Clone(c.chats)
	return s
}

// counts returns the frames and audio packets c got from remote id.
func (c *client) counts(id string) (frames, audio int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r := c.consumers[id]; r != nil {
		return r.Counts()
	}
	return 0, 0
}

// errors returns the error messages c got so far.
func (c *client) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}

// payloads returns the payloads of pkts.
func payloads(pkts []*rtp.Packet) [][]byte {
	out := make([][]byte, len(pkts))
	for i, p := range pkts {
		out[i] = p.Payload
	}
	return out
}
