package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"
)

// arbiterRoom creates an Arbiter room through the API of the router at
// addr, claims it for path and returns its id.
func arbiterRoom(t *testing.T, addr, path string) string {
	t.Helper()
	call := func(method, p, body string) map[string]any {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+addr+p, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %v %v", method, p, resp.StatusCode, m, err)
		}
		return m
	}
	call(http.MethodPost, "/createRoom", "")
	roomID, _ := call(http.MethodPatch, "/claimRoom", `{"urlPath":"`+path+`"}`)["roomId"].(string)
	if roomID == "" {
		t.Fatal("no room claimed")
	}
	return roomID
}

// arbiterClient is a minimal Arbiter gateway client: it identifies,
// produces its speaker's audio, answers the consumer offers of the
// participant it expects with a listening peer, and notes who it is told
// disconnected.
type arbiterClient struct {
	t        *testing.T
	id       string
	roomID   string
	ws       *websocket.Conn
	wmu      sync.Mutex
	sp       *sylkSpeaker // the producer
	answered chan struct{}

	expect   string       // the participant whose consumer is answered
	consumer *sylkSpeaker // listens to expect

	mu          sync.Mutex
	consumed    bool // a consumer offer was answered
	queued      []webrtc.ICECandidateInit
	disconnects map[string]time.Time
}

// dialArbiter connects participant id to room roomID on the router at
// addr, offers its producer and waits for the router's answer. If expect
// is not empty, the client answers expect's consumer offers.
func dialArbiter(t *testing.T, ctx context.Context, addr, roomID, id, expect string) *arbiterClient {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/arbiter/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &arbiterClient{t: t, id: id, roomID: roomID, ws: ws, sp: newSpeaker(t), answered: make(chan struct{}),
		expect: expect, disconnects: map[string]time.Time{}}
	if expect != "" {
		c.consumer = newSpeaker(t)
	}
	done := make(chan struct{})
	go c.read(done)
	t.Cleanup(func() {
		_ = ws.Close()
		<-done
	})
	c.send("identify", map[string]any{"id": id, "roomId": roomID, "type": "client"})
	c.send("handshake", map[string]any{"type": "producer", "sender": id, "roomId": roomID,
		"description": map[string]any{"type": "offer", "sdp": c.sp.offer(webrtc.RTPTransceiverDirectionSendonly)}})
	select {
	case <-c.answered:
	case <-ctx.Done():
		t.Fatalf("%s: no producer answer", id)
	}
	return c
}

func (c *arbiterClient) send(action string, data map[string]any) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteJSON(map[string]any{"action": action, "data": data}); err != nil {
		c.t.Errorf("%s: %s: %v", c.id, action, err)
	}
}

// read handles the router's messages until the socket closes.
func (c *arbiterClient) read(done chan struct{}) {
	defer close(done)
	for {
		var m struct {
			Type         string                     `json:"type"`
			RemotePeerID string                     `json:"remotePeerId"`
			ClientID     string                     `json:"clientId"`
			Description  *webrtc.SessionDescription `json:"description"`
			Candidate    *webrtc.ICECandidateInit   `json:"candidate"`
		}
		if err := c.ws.ReadJSON(&m); err != nil {
			return
		}
		switch {
		case m.Type == "producer" && m.Description != nil:
			if err := c.sp.pc.SetRemoteDescription(*m.Description); err != nil {
				c.t.Errorf("%s: producer answer: %v", c.id, err)
				continue
			}
			close(c.answered)
		case m.Type == "producer" && m.Candidate != nil:
			_ = c.sp.pc.AddICECandidate(*m.Candidate)
		case m.Type == "consumer" && m.RemotePeerID == c.expect && c.consumer != nil:
			c.onConsumer(m.Description, m.Candidate)
		case m.Type == "clientDisconnect":
			c.mu.Lock()
			c.disconnects[m.ClientID] = time.Now()
			c.mu.Unlock()
		}
	}
}

// onConsumer answers a consumer offer with all the listener's candidates,
// and adds the router's candidates once the first offer is applied.
func (c *arbiterClient) onConsumer(d *webrtc.SessionDescription, ci *webrtc.ICECandidateInit) {
	pc := c.consumer.pc
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case d != nil: // the first offer, or a renegotiation
		if err := pc.SetRemoteDescription(*d); err != nil {
			c.t.Errorf("%s: consumer offer: %v", c.id, err)
			return
		}
		answer, err := pc.CreateAnswer(nil)
		if err != nil {
			c.t.Errorf("%s: consumer answer: %v", c.id, err)
			return
		}
		gathered := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(answer); err != nil {
			c.t.Errorf("%s: consumer answer: %v", c.id, err)
			return
		}
		<-gathered
		c.consumed = true
		c.send("handshake", map[string]any{"type": "consumer", "sender": c.id, "roomId": c.roomID, "remotePeerId": c.expect,
			"description": pc.LocalDescription()})
		for _, q := range c.queued {
			_ = pc.AddICECandidate(q)
		}
		c.queued = nil
	case ci != nil && !c.consumed:
		c.queued = append(c.queued, *ci)
	case ci != nil:
		_ = pc.AddICECandidate(*ci)
	}
}

// told returns when the client was told id disconnected (zero: not yet).
func (c *arbiterClient) told(id string) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.disconnects[id]
}

// TestArbiterBites: the audio of an Arbiter room goes through the default
// pipeline to NATS, its bites keyed by the room id, with the participant's
// id as user.
func TestArbiterBites(t *testing.T) {
	r := startRouter(t, nil)
	bites := r.bites("bite")
	ctx := deadline(t, 60*time.Second)
	roomID := arbiterRoom(t, r.a.addr(), "/bites")
	var speakers []*sylkSpeaker
	for _, id := range []string{"ada", "bo"} {
		speakers = append(speakers, dialArbiter(t, ctx, r.a.addr(), roomID, id, "").sp)
	}
	speakAll(t, ctx, speakers...)
	biteUsers(t, bites, roomID, "ada", "bo")
}
