package arbiter

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/internal/testutil"
)

// rawSocket is a gateway socket driven by hand. A goroutine reads it
// (gorilla's sockets do not survive a read deadline).
type rawSocket struct {
	t    *testing.T
	ws   *websocket.Conn
	msgs chan []byte
	err  error // why the socket ended, once msgs is closed
}

// open dials the gateway. Cleanup closes the socket.
func open(t *testing.T, r *router) *rawSocket {
	t.Helper()
	ws, _, err := dial(t, r)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	s := &rawSocket{t: t, ws: ws, msgs: make(chan []byte, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.msgs)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				s.err = err
				return
			}
			s.msgs <- b
		}
	}()
	t.Cleanup(func() { _ = ws.Close(); <-done })
	return s
}

// send sends a frame.
func (s *rawSocket) send(frame string) {
	s.t.Helper()
	if err := s.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
		s.t.Fatalf("send: %v", err)
	}
}

// identify sends an identify frame.
func (s *rawSocket) identify(id string, roomID any, typ string) {
	s.t.Helper()
	b, _ := json.Marshal(map[string]any{"action": "identify", "data": map[string]any{"id": id, "roomId": roomID, "type": typ}})
	s.send(string(b))
}

// errTimeout is next's error when nothing came in time.
var errTimeout = errors.New("nothing within the deadline")

// next returns the next message within d; the socket's end (its close
// error) when it ends instead; errTimeout when nothing comes.
func (s *rawSocket) next(d time.Duration) (map[string]any, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case b, ok := <-s.msgs:
		if !ok {
			return nil, s.err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			s.t.Fatalf("not JSON: %q", b)
		}
		return m, nil
	case <-t.C:
		return nil, errTimeout
	}
}

// wantError reads the next message: an error whose message says want.
func (s *rawSocket) wantError(what, want string) {
	s.t.Helper()
	m, err := s.next(5 * time.Second)
	if err != nil {
		s.t.Errorf("%s: no error message: %v", what, err)
		return
	}
	if m["type"] != "error" || !strings.Contains(fmt.Sprint(m["message"]), want) {
		s.t.Errorf("%s: %v, want an error saying %q", what, m, want)
	}
}

// wantNothing checks that nothing comes within d (the socket stays open).
func (s *rawSocket) wantNothing(what string, d time.Duration) {
	s.t.Helper()
	m, err := s.next(d)
	if err != errTimeout {
		s.t.Errorf("%s: got %v, %v; want nothing", what, m, err)
	}
}

// wantClose reads until the socket closes and checks the close code.
func (s *rawSocket) wantClose(what string, code int, d time.Duration) {
	s.t.Helper()
	for {
		_, err := s.next(d)
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != code {
			s.t.Errorf("%s: socket ended with %v, want close code %d", what, err, code)
		}
		return
	}
}

// TestIdentify: every identify that must be refused is answered with an
// error message and has no effect; a refused socket may still identify.
func TestIdentify(t *testing.T) {
	r := newRouter(t, testutil.ConnectNATS(t, startJetStream(t, "").URL()), Config{MaxParticipants: 2})
	r.createRoom(t)
	roomID := r.claim(t, "/identify")
	free := r.createRoom(t)
	tests := []struct {
		name   string
		id     string
		roomID any
		typ    string
		want   string
	}{
		{"sfu", "sfu-1", roomID, "sfu", "type sfu is refused"},
		{"no type", "c-1", roomID, "", "type must be client"},
		{"empty id", "", roomID, "client", "bad id"},
		{"id with a newline", "a\nb", roomID, "client", "bad id"},
		{"long id", strings.Repeat("x", 300), roomID, "client", "bad id"},
		{"null roomId", "c-1", nil, "client", "no roomId"},
		{"unknown room", "c-1", "00000000-0000-4000-8000-000000000000", "client", "room not found"},
		{"number room", "c-1", 1234, "client", "room not found"},
		{"not a room id", "c-1", "room.>", "client", "room not found"},
		{"free room", "c-1", free, "client", "room not claimed"},
	}
	for _, tt := range tests {
		s := open(t, r)
		s.identify(tt.id, tt.roomID, tt.typ)
		s.wantError(tt.name, tt.want)
		s.send(fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":%q,"roomId":%q,"candidate":{"candidate":""}}}`, tt.id, roomID))
		s.wantError(tt.name+", then a handshake", "handshake before identify")
	}
	if st := r.Stats(); st.Participants != 0 {
		t.Fatalf("%d participants after refused identifies", st.Participants)
	}

	// Two participants fill the room; an id is one participant.
	first := open(t, r)
	first.identify("p-1", roomID, "client")
	first.wantNothing("first identify", 200*time.Millisecond)
	dup := open(t, r)
	dup.identify("p-1", roomID, "client")
	dup.wantError("an id already in the room", "id already in this room")
	dup.identify("p-2", roomID, "client") // it may try again
	dup.wantNothing("second participant", 200*time.Millisecond)
	third := open(t, r)
	third.identify("p-3", roomID, "client")
	third.wantError("a third participant", "room full (2 participants)")
	if st := r.Stats(); st.Participants != 2 {
		t.Errorf("%d participants, want 2", st.Participants)
	}
	// The refused socket was not told of anyone; the first gets
	// clientDisconnect when the second leaves.
	_ = dup.ws.Close()
	m, err := first.next(2 * time.Second)
	if err != nil || m["type"] != "clientDisconnect" || m["clientId"] != "p-2" {
		t.Errorf("after p-2 left, p-1 got %v, %v; want clientDisconnect of p-2", m, err)
	}
	third.wantNothing("the refused socket", 100*time.Millisecond)
}

// TestSocketLimits: the identify deadline, MAX_MESSAGE, the message rate,
// the bound on sockets waiting to identify and the origin list each close
// or refuse only the socket concerned.
func TestSocketLimits(t *testing.T) {
	n := startJetStream(t, "")
	t.Run("identify deadline", func(t *testing.T) {
		r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{IdentifyTimeout: 300 * time.Millisecond})
		began := time.Now() // the deadline runs from the upgrade, inside open
		s := open(t, r)
		s.send(`{"action":"handshake","data":{}}`) // answered, but no identify
		s.wantError("handshake", "handshake before identify")
		s.wantClose("silent socket", websocket.ClosePolicyViolation, 5*time.Second)
		if d := time.Since(began); d < 300*time.Millisecond || d > 3*time.Second {
			t.Errorf("closed after %v, want about 300ms", d)
		}
	})
	t.Run("message too large", func(t *testing.T) {
		r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{MaxMessage: 1024})
		s := open(t, r)
		other := open(t, r)
		s.send(`{"action":"identify","data":{"id":"` + strings.Repeat("x", 2000) + `"}}`)
		s.wantClose("oversized message", websocket.CloseMessageTooBig, 5*time.Second)
		other.send(`{}`)
		other.wantError("another socket", "no data")
	})
	t.Run("message flood", func(t *testing.T) {
		r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{})
		s := open(t, r)
		began := time.Now()
		for range msgBurst + 50 {
			if s.ws.WriteMessage(websocket.TextMessage, []byte(`{}`)) != nil {
				break
			}
		}
		// A close frame (1008), or a reset: the router closes the socket
		// with the rest of the flood unread.
		for {
			_, err := s.next(5 * time.Second)
			if err == errTimeout {
				t.Fatal("the flooding socket is still open")
			}
			if err != nil {
				var ce *websocket.CloseError
				// gorilla reports a reset as 1006 (abnormal closure).
				if errors.As(err, &ce) && ce.Code != websocket.ClosePolicyViolation && ce.Code != websocket.CloseAbnormalClosure {
					t.Errorf("closed with %v, want 1008", err)
				}
				break
			}
		}
		if err := testutil.Until(deadline(t, waitLong), func() bool { return r.Stats().Sockets == 0 }); err != nil {
			t.Errorf("%d sockets open after the flood", r.Stats().Sockets)
		}
		// The burst, and what the rate refilled meanwhile.
		most := msgBurst + int(msgRate*time.Since(began).Seconds()) + 1
		if st := r.Stats(); st.BadMessages > uint64(most) {
			t.Errorf("%d messages answered, want at most %d", st.BadMessages, most)
		}
	})
	t.Run("pending sockets", func(t *testing.T) {
		r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{MaxPending: 1})
		r.createRoom(t)
		roomID := r.claim(t, "/pending")
		s := open(t, r)
		if _, resp, err := dial(t, r); err == nil || resp == nil || resp.StatusCode != 503 {
			t.Fatalf("a second socket waiting to identify: %v, %v; want 503", resp, err)
		}
		s.identify("p-1", roomID, "client")
		s.wantNothing("identify", 100*time.Millisecond)
		ws, _, err := dial(t, r)
		if err != nil {
			t.Fatalf("a socket after the first identified: %v", err)
		}
		_ = ws.Close()
		if st := r.Stats(); st.RefusedPending != 1 {
			t.Errorf("%d refused, want 1", st.RefusedPending)
		}
	})
	t.Run("origins", func(t *testing.T) {
		r := newRouter(t, testutil.ConnectNATS(t, n.URL()), Config{Origins: []string{"http://other.example"}})
		if _, resp, err := dial(t, r); err == nil || resp == nil || resp.StatusCode != 403 {
			t.Errorf("upgrade from an unlisted origin: %v, %v; want 403", resp, err)
		}
	})
}

// TestProducerRefused: a producer offer that is not SDP is answered with an
// error; the producer closes, so the participant leaves: its socket closes
// and the others get clientDisconnect.
func TestProducerRefused(t *testing.T) {
	r := newRouter(t, testutil.ConnectNATS(t, startJetStream(t, "").URL()), Config{})
	r.createRoom(t)
	roomID := r.claim(t, "/refused")
	stay := open(t, r)
	stay.identify("stay", roomID, "client")
	bad := open(t, r)
	bad.identify("bad", roomID, "client")
	if err := testutil.Until(deadline(t, waitLong), func() bool { return r.Stats().Participants == 2 }); err != nil {
		t.Fatalf("%d participants, want 2", r.Stats().Participants)
	}
	bad.send(fmt.Sprintf(`{"action":"handshake","data":{"type":"producer","sender":"bad","roomId":%q,"description":{"type":"offer","sdp":"not sdp"}}}`, roomID))
	bad.wantError("bad offer", "producer offer refused")
	bad.wantError("bad offer", "producer connection closed")
	bad.wantClose("bad offer", websocket.CloseGoingAway, 5*time.Second)
	m, err := stay.next(2 * time.Second)
	if err != nil || m["type"] != "clientDisconnect" || m["clientId"] != "bad" {
		t.Errorf("the other participant got %v, %v; want clientDisconnect of bad", m, err)
	}
	if err := testutil.Until(deadline(t, waitLong), func() bool { return r.Stats().Participants == 1 }); err != nil {
		t.Errorf("%d participants, want 1", r.Stats().Participants)
	}
}

// TestCloseWithSockets: Close ends every socket (identified or not) and
// waits for them; their participants leave.
func TestCloseWithSockets(t *testing.T) {
	r := newRouter(t, testutil.ConnectNATS(t, startJetStream(t, "").URL()), Config{})
	r.createRoom(t)
	roomID := r.claim(t, "/closing")
	a, b, idle := open(t, r), open(t, r), open(t, r)
	a.identify("a", roomID, "client")
	b.identify("b", roomID, "client")
	if err := testutil.Until(deadline(t, waitLong), func() bool { return r.Stats().Participants == 2 }); err != nil {
		t.Fatalf("%d participants, want 2", r.Stats().Participants)
	}
	r.Close()
	for _, s := range []*rawSocket{a, b, idle} {
		for {
			_, err := s.next(5 * time.Second)
			if err == errTimeout {
				t.Fatal("a socket is still open after Close")
			}
			if err != nil {
				break
			}
		}
	}
	if st := r.Stats(); st.Sockets != 0 || st.Participants != 0 {
		t.Errorf("after Close: %+v", st)
	}
	if c := r.cfg.Rooms.Conversation(roomID); c != nil {
		t.Errorf("the room's conversation outlived its participants")
	}
	if a := r.call(t, "GET", "/getRoomId?urlPath=/closing", ""); a.code != 503 {
		t.Errorf("room API after Close: %d %s", a.code, a.raw)
	}
}
