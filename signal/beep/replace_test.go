package beep

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testpeer"
)

// loopbackOffer returns a pion client's offer of one sendrecv audio m-line
// with its candidates, gathered on 127.0.0.1 only. The client is closed
// at the end of the test; it never connects.
func loopbackOffer(t *testing.T) string {
	t.Helper()
	var m webrtc.MediaEngine
	if err := m.RegisterDefaultCodecs(); err != nil {
		t.Fatal(err)
	}
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(&m), webrtc.WithSettingEngine(testpeer.Settings())).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	sdp, err := testpeer.Gather(t.Context(), pc, offer)
	if err != nil {
		t.Fatal(err)
	}
	return sdp
}

// TestReplacedBeforeConnected: a device that connects again while its
// first connection is still negotiating replaces it, and the first socket
// is told so (normal closure, "replaced ..."), not that its offer was bad
// or its connection failed.
func TestReplacedBeforeConnected(t *testing.T) {
	env := newConnectEnv(t, Config{})
	first := env.mustOpen(t, "10.0.0.1:1")
	if err := first.WriteMessage(websocket.TextMessage, []byte(loopbackOffer(t))); err != nil {
		t.Fatal(err)
	}
	_ = first.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, answer, err := first.ReadMessage(); err != nil || !strings.HasPrefix(string(answer), "v=0") {
		t.Fatalf("first connection: %q, %v; want an answer", answer, err)
	}
	second := env.mustOpen(t, "10.0.0.1:2")
	if err := second.WriteMessage(websocket.TextMessage, []byte(loopbackOffer(t))); err != nil {
		t.Fatal(err)
	}
	for {
		_, msg, err := first.ReadMessage()
		if err == nil {
			t.Logf("first connection: %q", msg)
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("first connection: %v, want a close frame", err)
		}
		if ce.Code != websocket.CloseNormalClosure || !strings.Contains(ce.Text, "replaced") {
			t.Fatalf("first connection closed with %d %q, want %d saying it was replaced", ce.Code, ce.Text, websocket.CloseNormalClosure)
		}
		return
	}
}
