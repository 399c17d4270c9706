package turn

import (
	"encoding/json"
	"net/http"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// iceServer is an RTCIceServer as browsers take it.
type iceServer struct {
	URLs       []string `json:"urls"`
	Username   string   `json:"username,omitempty"`
	Credential string   `json:"credential,omitempty"`
}

// ICEServersHandler serves GET /ice-servers: the JSON list of RTCIceServer
// (RTCConfiguration.iceServers) a client should use, with a fresh
// credential of the caller's user (from claims) for the built-in TURN
// server s. With s nil (no TURN configured) the list is empty. A caller
// without a valid claim is refused (claim.Status).
func ICEServersHandler(s *Server, claims claim.Extractor) http.Handler {
	return claim.Require(claims, func(w http.ResponseWriter, _ *http.Request, c claim.Claim) {
		list := []iceServer{}
		if s != nil {
			list = append(list, toJSON(s.ICEServer(c.UserID)))
		}
		b, err := json.Marshal(list)
		if err != nil {
			http.Error(w, "ice servers", http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store") // a credential
		_, _ = w.Write(b)
	})
}

func toJSON(s webrtc.ICEServer) iceServer {
	cred, _ := s.Credential.(string)
	return iceServer{URLs: s.URLs, Username: s.Username, Credential: cred}
}
