package arbiter

import (
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	pmedia "github.com/pion/webrtc/v3/pkg/media"
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

	prod           *webrtc.PeerConnection
	chat, features *webrtc.DataChannel
	video, audio   *webrtc.TrackLocalStaticSample
	keyframe       chan struct{}
	prodConnected  chan struct{}

	mu          sync.Mutex
	remoteSet   bool
	queued      []webrtc.ICECandidateInit
	consumers   map[string]*remote
	forgotten   []*remote
	disconnects map[string]time.Time
	errs        []string
	feats       map[string]features
	chats       []string
	offers      map[string]int // consumer offers by remotePeerId
	closing     bool

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// remote is a consumer connection: one remote participant's media.
type remote struct {
	pc       *webrtc.PeerConnection
	remoteOK bool
	queued   []webrtc.ICECandidateInit
	video    []*rtp.Packet
	audio    [][]byte
	frames   int
}

// clientAPI is a pion API like a browser's, on 127.0.0.1 over UDP4 only,
// without mDNS: default codecs (VP8 first) and interceptors.
func clientAPI(t *testing.T) *webrtc.API {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		t.Fatal(err)
	}
	s := webrtc.SettingEngine{}
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(loopback) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s))
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
		t: t, id: id, roomID: roomID, ws: ws, api: clientAPI(t), media: m,
		keyframe: make(chan struct{}, 1), prodConnected: make(chan struct{}),
		consumers: map[string]*remote{}, disconnects: map[string]time.Time{}, feats: map[string]features{}, offers: map[string]int{},
		stop: make(chan struct{}),
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
	pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	c.prod = pc
	negotiated := true
	chatID, featID := uint16(100), uint16(110)
	if c.chat, err = pc.CreateDataChannel("chat", &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &chatID}); err != nil {
		t.Fatal(err)
	}
	if c.audio, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", c.id); err != nil {
		t.Fatal(err)
	}
	if c.video, err = webrtc.NewTrackLocalStaticSample(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeVP8, ClockRate: 90000}, "video", c.id); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []*webrtc.TrackLocalStaticSample{c.audio, c.video} {
		s, err := pc.AddTrack(tr)
		if err != nil {
			t.Fatal(err)
		}
		c.wg.Add(1)
		go c.readRTCP(s)
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
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(c.prodConnected) })
		}
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
	c.wg.Add(2)
	go c.sendVideo()
	go c.sendAudio()
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
		if err := c.prod.SetRemoteDescription(*d); err != nil {
			c.t.Errorf("%s: producer answer: %v", c.id, err)
			return
		}
		c.mu.Lock()
		c.remoteSet = true
		q := c.queued
		c.queued = nil
		c.mu.Unlock()
		for _, q := range q {
			_ = c.prod.AddICECandidate(q)
		}
		return
	}
	if ci == nil {
		return
	}
	if ci.SDPMid == nil || *ci.SDPMid != "0" { // a browser matches it against its m-lines
		c.t.Errorf("%s: producer candidate names m-line %v, want the first, 0", c.id, ci.SDPMid)
	}
	c.mu.Lock()
	if !c.remoteSet {
		c.queued = append(c.queued, *ci)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if err := c.prod.AddICECandidate(*ci); err != nil {
		c.t.Errorf("%s: producer candidate: %v", c.id, err)
	}
}

// onConsumer answers a consumer offer, or adds a consumer candidate.
func (c *client) onConsumer(peerID string, d *webrtc.SessionDescription, ci *webrtc.ICECandidateInit) {
	c.mu.Lock()
	r := c.consumers[peerID]
	if r == nil && !c.closing {
		pc, err := c.api.NewPeerConnection(webrtc.Configuration{})
		if err != nil {
			c.mu.Unlock()
			c.t.Error(err)
			return
		}
		r = &remote{pc: pc}
		c.consumers[peerID] = r
		pc.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) { c.readTrack(r, tr) })
		pc.OnICECandidate(func(ci *webrtc.ICECandidate) {
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
		if err := r.pc.SetRemoteDescription(*d); err != nil {
			c.t.Errorf("%s: consumer offer: %v", c.id, err)
			return
		}
		answer, err := r.pc.CreateAnswer(nil)
		if err == nil {
			err = r.pc.SetLocalDescription(answer)
		}
		if err != nil {
			c.t.Errorf("%s: consumer answer: %v", c.id, err)
			return
		}
		c.handshake(map[string]any{"type": "consumer", "remotePeerId": peerID, "description": answer})
		c.mu.Lock()
		r.remoteOK = true
		q := r.queued
		r.queued = nil
		c.mu.Unlock()
		for _, q := range q {
			_ = r.pc.AddICECandidate(q)
		}
		return
	}
	if ci == nil {
		return
	}
	c.mu.Lock()
	if !r.remoteOK {
		r.queued = append(r.queued, *ci)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	_ = r.pc.AddICECandidate(*ci)
}

// readTrack records one consumer track's packets until it ends.
func (c *client) readTrack(r *remote, tr *webrtc.TrackRemote) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()
	video := tr.Kind() == webrtc.RTPCodecTypeVideo
	for {
		p, _, err := tr.ReadRTP()
		if err != nil {
			return
		}
		c.mu.Lock()
		if video {
			r.video = append(r.video, p.Clone())
			if p.Marker {
				r.frames++
			}
		} else {
			r.audio = append(r.audio, slices.Clone(p.Payload))
		}
		c.mu.Unlock()
	}
}

// readRTCP drains a sender's RTCP and notes keyframe requests.
func (c *client) readRTCP(s *webrtc.RTPSender) {
	defer c.wg.Done()
	for {
		pkts, _, err := s.ReadRTCP()
		if err != nil {
			return
		}
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				select {
				case c.keyframe <- struct{}{}:
				default:
				}
			}
		}
	}
}

// sendVideo sends the client's VP8 at 30 frames a second, looped; a
// keyframe request makes the next frame a key frame, as an encoder would.
func (c *client) sendVideo() {
	defer c.wg.Done()
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	frames := c.media.frames
	for i := 0; ; i = (i + 1) % len(frames) {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		select {
		case <-c.keyframe:
			for !frames[i].Keyframe {
				i = (i + 1) % len(frames)
			}
		default:
		}
		_ = c.video.WriteSample(pmedia.Sample{Data: frames[i].Data, Duration: frames[i].Duration})
	}
}

// sendAudio sends the client's Opus every 20 ms, looped.
func (c *client) sendAudio() {
	defer c.wg.Done()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(c.media.opus) {
		select {
		case <-c.stop:
			return
		case <-tick.C:
		}
		_ = c.audio.WriteSample(pmedia.Sample{Data: c.media.opus[i], Duration: 20 * time.Millisecond})
	}
}

// leave closes the socket without a close frame, as a closing tab does.
func (c *client) leave() { _ = c.ws.Close() }

// close stops the client and closes all its connections.
func (c *client) close() {
	c.closeOnce.Do(func() {
		close(c.stop)
		_ = c.ws.Close()
		c.mu.Lock()
		c.closing = true
		pcs := []*webrtc.PeerConnection{}
		for _, r := range c.consumers {
			pcs = append(pcs, r.pc)
		}
		for _, r := range c.forgotten {
			pcs = append(pcs, r.pc)
		}
		c.mu.Unlock()
		if c.prod != nil {
			pcs = append(pcs, c.prod)
		}
		for _, pc := range pcs {
			_ = pc.Close()
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
		s.consumers[id] = received{frames: r.frames, video: slices.Clone(r.video), audio: slices.Clone(r.audio), state: r.pc.ConnectionState()}
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
		return r.frames, len(r.audio)
	}
	return 0, 0
}

// errors returns the error messages c got so far.
func (c *client) errors() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.errs)
}
