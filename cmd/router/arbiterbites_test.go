package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"
)

// TestArbiterBites: the audio of an Arbiter room goes through the default
// pipeline to NATS, its bites keyed by the room id, with the participant's
// id as user.
func TestArbiterBites(t *testing.T) {
	r := startRouter(t, nil)
	bites := r.bites("bite")
	ctx := deadline(t, 60*time.Second)

	call := func(method, path, body string) map[string]any {
		t.Helper()
		req, err := http.NewRequest(method, r.url(path), strings.NewReader(body))
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
			t.Fatalf("%s %s: %d %v %v", method, path, resp.StatusCode, m, err)
		}
		return m
	}
	call(http.MethodPost, "/createRoom", "")
	roomID, _ := call(http.MethodPatch, "/claimRoom", `{"urlPath":"/bites"}`)["roomId"].(string)
	if roomID == "" {
		t.Fatal("no room claimed")
	}

	var speakers []*sylkSpeaker
	for _, id := range []string{"ada", "bo"} {
		ws, _, err := websocket.DefaultDialer.Dial("ws://"+r.a.addr()+"/arbiter/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ws.Close() })
		send := func(action string, data map[string]any) {
			if err := ws.WriteJSON(map[string]any{"action": action, "data": data}); err != nil {
				t.Fatal(err)
			}
		}
		send("identify", map[string]any{"id": id, "roomId": roomID, "type": "client"})
		sp := newSpeaker(t)
		send("handshake", map[string]any{"type": "producer", "sender": id, "roomId": roomID,
			"description": map[string]any{"type": "offer", "sdp": sp.offer(webrtc.RTPTransceiverDirectionSendonly)}})
		// The router's answer, then its candidates, as producer messages.
		answered := make(chan struct{})
		go func() {
			for {
				var m struct {
					Type        string                     `json:"type"`
					Description *webrtc.SessionDescription `json:"description"`
					Candidate   *webrtc.ICECandidateInit   `json:"candidate"`
				}
				if err := ws.ReadJSON(&m); err != nil {
					return
				}
				switch {
				case m.Type != "producer":
				case m.Description != nil:
					if err := sp.pc.SetRemoteDescription(*m.Description); err == nil {
						close(answered)
					}
				case m.Candidate != nil:
					_ = sp.pc.AddICECandidate(*m.Candidate)
				}
			}
		}()
		select {
		case <-answered:
		case <-ctx.Done():
			t.Fatalf("%s: no producer answer", id)
		}
		speakers = append(speakers, sp)
	}
	speakAll(t, ctx, speakers...)
	biteUsers(t, bites, roomID, "ada", "bo")
}
