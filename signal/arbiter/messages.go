package arbiter

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/pion/webrtc/v3"
)

// Client frames are {"action": A, "data": {...}}; the router's frames are
// the bare data object, switched on "type" by the client.

// Actions a client sends.
const (
	actionIdentify  = "identify"
	actionHandshake = "handshake"
)

// Connection types of a handshake, and the router's message types.
const (
	typeProducer         = "producer"
	typeConsumer         = "consumer"
	typeClientDisconnect = "clientDisconnect"
	typeError            = "error"
)

// request is one parsed client frame: an identify or a handshake.
type request struct {
	action    string
	identify  identifyData
	handshake handshakeData
	roomID    string // identify's or handshake's roomId, as a string; "" for null or absent
}

// identifyData is identify's data.
type identifyData struct {
	ID     string          `json:"id"`
	RoomID json.RawMessage `json:"roomId"`
	Type   string          `json:"type"`
}

// handshakeData is handshake's data.
type handshakeData struct {
	Type         string                   `json:"type"`
	Sender       string                   `json:"sender"`
	RemotePeerID string                   `json:"remotePeerId"`
	Description  *description             `json:"description"`
	Candidate    *webrtc.ICECandidateInit `json:"candidate"`
	RoomID       json.RawMessage          `json:"roomId"`
}

// description is an RTCSessionDescriptionInit.
type description struct {
	Type string `json:"type"`
	SDP  string `json:"sdp"`
}

// errBadFrame wraps every reason a client frame is refused.
var errBadFrame = errors.New("bad message")

// parseRequest parses one client frame. Unknown fields are ignored (the
// client sends more than the router reads); wrong types, unknown actions
// and missing data are errors, which say what is wrong.
func parseRequest(b []byte) (request, error) {
	var f struct {
		Action string          `json:"action"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return request{}, fmt.Errorf("%w: not a JSON object with action and data", errBadFrame)
	}
	if len(f.Data) == 0 || bytes.Equal(f.Data, []byte("null")) {
		return request{}, fmt.Errorf("%w: no data", errBadFrame)
	}
	r := request{action: f.Action}
	var raw json.RawMessage
	switch f.Action {
	case actionIdentify:
		if err := json.Unmarshal(f.Data, &r.identify); err != nil {
			return request{}, fmt.Errorf("%w: identify: %v", errBadFrame, err)
		}
		raw = r.identify.RoomID
	case actionHandshake:
		if err := json.Unmarshal(f.Data, &r.handshake); err != nil {
			return request{}, fmt.Errorf("%w: handshake: %v", errBadFrame, err)
		}
		raw = r.handshake.RoomID
	default:
		return request{}, fmt.Errorf("%w: unknown action %.40q", errBadFrame, f.Action)
	}
	id, err := roomIDString(raw)
	if err != nil {
		return request{}, err
	}
	r.roomID = id
	return r, nil
}

// roomIDString reads a roomId: a string (the router's ids), or a number
// (the original's docs show one), compared as its JSON text; null or
// absent is "".
func roomIDString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		if _, err := strconv.ParseFloat(string(n), 64); err == nil {
			return string(n), nil
		}
	}
	return "", fmt.Errorf("%w: roomId is neither a string nor a number", errBadFrame)
}

// The router's messages to a client.

// producerMessage is the producer's answer or one of its candidates.
type producerMessage struct {
	Type        string                   `json:"type"`
	Sender      string                   `json:"sender"`
	Receiver    string                   `json:"receiver"`
	Description *description             `json:"description,omitempty"`
	Candidate   *webrtc.ICECandidateInit `json:"candidate,omitempty"`
}

// consumerMessage is a consumer's offer or one of its candidates.
type consumerMessage struct {
	Type         string                   `json:"type"`
	Sender       string                   `json:"sender"`
	Receiver     string                   `json:"receiver"`
	RemotePeerID string                   `json:"remotePeerId"`
	Description  *description             `json:"description,omitempty"`
	Candidate    *webrtc.ICECandidateInit `json:"candidate,omitempty"`
}

// disconnectMessage tells a client that a participant left.
type disconnectMessage struct {
	Type     string `json:"type"`
	ClientID string `json:"clientId"`
}

// errorMessage tells a client what was wrong (the client only logs it).
type errorMessage struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// features is the payload of the features channel.
type features struct {
	Audio bool `json:"audio"`
	Video bool `json:"video"`
}

// featuresMessage tells a client, on its features channel, what a remote
// participant sends.
type featuresMessage struct {
	ID       string   `json:"id"`
	Features features `json:"features"`
}
