package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestSylkAPIServed: the router serves the Sylk API on /webrtcgateway/ws:
// a sylkRTC-2 socket gets the ready event and its ping acked, and a socket
// without the subprotocol is refused with 406. (signal/sylk tests the API.)
func TestSylkAPIServed(t *testing.T) {
	r := startRouter(t, nil)
	url := strings.Replace(r.wsURL(), "/connect", "/webrtcgateway/ws", 1)

	d := websocket.Dialer{Subprotocols: []string{"sylkRTC-2"}, HandshakeTimeout: 5 * time.Second}
	c, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer c.Close()
	// Once: Chromium refuses a handshake that names it twice.
	if got := resp.Header.Values("Sec-WebSocket-Protocol"); len(got) != 1 || got[0] != "sylkRTC-2" {
		t.Errorf("subprotocol headers %q, want one sylkRTC-2", got)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	read := func() map[string]any {
		t.Helper()
		var m map[string]any
		if err := c.ReadJSON(&m); err != nil {
			t.Fatalf("read: %v", err)
		}
		return m
	}
	if m := read(); m["sylkrtc"] != "ready-event" {
		t.Fatalf("first message %v, want the ready event", m)
	}
	ping, _ := json.Marshal(map[string]string{"sylkrtc": "ping", "transaction": "t1"})
	if err := c.WriteMessage(websocket.TextMessage, ping); err != nil {
		t.Fatal(err)
	}
	if m := read(); m["sylkrtc"] != "ack" || m["transaction"] != "t1" {
		t.Fatalf("ping answered %v, want ack t1", m)
	}

	_, resp, err = websocket.DefaultDialer.Dial(url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusNotAcceptable {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("no subprotocol: %v, status %d; want 406", err, code)
	}
}
