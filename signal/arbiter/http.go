package arbiter

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"
)

// maxURLPath bounds a urlPath, in bytes once decoded.
const maxURLPath = 2048

// maxBody bounds a claimRoom or createRoom body.
const maxBody = 8 << 10

// message answers are {"message": …}.
type message struct {
	Message string `json:"message"`
}

// writeJSON answers v with code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// cors wraps h with CORS: every answer carries Access-Control-Allow-Origin
// for an allowed origin (404s included: a browser hides the status from
// the page otherwise), preflights are answered here, and a request from an
// origin that is not allowed is refused (403) before h runs.
func (s *Server) cors(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := r.Header.Get("Origin")
		if !s.originAllowed(r) {
			writeJSON(w, http.StatusForbidden, message{"origin not allowed"})
			return
		}
		hd := w.Header()
		if o != "" {
			if s.any {
				hd.Set("Access-Control-Allow-Origin", "*")
			} else {
				hd.Set("Access-Control-Allow-Origin", o)
				hd.Add("Vary", "Origin")
			}
		}
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			hd.Set("Access-Control-Allow-Methods", "GET, PATCH, PUT, POST, OPTIONS")
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				hd.Set("Access-Control-Allow-Headers", req)
			}
			hd.Set("Access-Control-Max-Age", "86400")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h(w, r)
	})
}

// methodNotAllowed answers a method the route does not take.
func methodNotAllowed(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusMethodNotAllowed, message{"method " + r.Method + " not allowed"})
}

// canonicalPath is the form in which a urlPath is stored and compared: its
// percent-escapes decoded, "+" kept as it is (RFC 3986, not form
// encoding). A path that does not decode is kept as sent.
func canonicalPath(p string) string {
	if d, err := url.PathUnescape(p); err == nil {
		return d
	}
	return p
}

// queryURLPath returns the urlPath parameter of a raw query, undecoded
// (the client puts the page's path in the query as it is, unencoded, and
// sends the same string in claimRoom's JSON body), and whether it is there.
func queryURLPath(rawQuery string) (string, bool) {
	for part := range strings.SplitSeq(rawQuery, "&") {
		if v, ok := strings.CutPrefix(part, "urlPath="); ok {
			return v, true
		}
	}
	return "", false
}

// checkPath validates a decoded urlPath; it returns the client's error.
func checkPath(p string) string {
	switch {
	case p == "":
		return "missing urlPath"
	case len(p) > maxURLPath:
		return "urlPath too long"
	case !utf8.ValidString(p):
		return "urlPath is not UTF-8"
	}
	return ""
}

// storeFailure answers a store error: 503 with the reason, never a 500
// with internals.
func (s *Server) storeFailure(w http.ResponseWriter, what string, err error) {
	if errors.Is(err, ErrNoJetStream) {
		writeJSON(w, http.StatusServiceUnavailable, message{"room store unavailable: " + ErrNoJetStream.Error()})
		return
	}
	s.logThrottled(s.log, &s.storeLog, slog.LevelWarn, "arbiter: room store failed", "op", what, "err", err)
	writeJSON(w, http.StatusServiceUnavailable, message{"room store unavailable, try again"})
}

// getRoomID answers GET /getRoomId?urlPath=P: the room claimed for P.
func (s *Server) getRoomID(w http.ResponseWriter, r *http.Request) {
	raw, _ := queryURLPath(r.URL.RawQuery)
	p := canonicalPath(raw)
	if msg := checkPath(p); msg != "" {
		writeJSON(w, http.StatusBadRequest, message{msg})
		return
	}
	st, err := s.store()
	if err != nil {
		s.storeFailure(w, "getRoomId", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
	defer cancel()
	id, err := st.lookup(ctx, p)
	switch {
	case err != nil:
		s.storeFailure(w, "getRoomId", err)
	case id == "":
		writeJSON(w, http.StatusNotFound, message{"Room not found"})
	default:
		// The client reads id, the docs promise roomId: both.
		writeJSON(w, http.StatusOK, roomAnswer{RoomID: id, ID: id})
	}
}

// roomAnswer is getRoomId's and claimRoom's answer.
type roomAnswer struct {
	RoomID string `json:"roomId"`
	ID     string `json:"id"`
}

// claimRoom answers PATCH /claimRoom {"urlPath": P}: the room of P, taking
// a free one atomically if P has none.
func (s *Server) claimRoom(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, message{"missing urlPath"})
		return
	}
	var req struct {
		URLPath *string `json:"urlPath"`
	}
	if json.Unmarshal(body, &req) != nil || req.URLPath == nil {
		writeJSON(w, http.StatusBadRequest, message{"missing urlPath"})
		return
	}
	p := canonicalPath(*req.URLPath)
	if msg := checkPath(p); msg != "" {
		writeJSON(w, http.StatusBadRequest, message{msg})
		return
	}
	st, err := s.store()
	if err != nil {
		s.storeFailure(w, "claimRoom", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
	defer cancel()
	id, err := st.claim(ctx, p)
	switch {
	case errors.Is(err, ErrNoRoom):
		writeJSON(w, http.StatusNotFound, message{"Room not found"})
		return
	case err != nil:
		s.storeFailure(w, "claimRoom", err)
		return
	}
	writeJSON(w, http.StatusOK, roomAnswer{RoomID: id, ID: id})
	s.replenish(ctx)
}

// createAnswer is createRoom's answer.
type createAnswer struct {
	Message string `json:"message"`
	RoomID  string `json:"roomId"`
}

// createRoom answers PUT or POST /createRoom: a new free room, claimable
// as soon as the answer is sent.
func (s *Server) createRoom(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, http.MaxBytesReader(w, r.Body, maxBody)) // the deploy tool sends JSON we do not need
	st, err := s.store()
	if err != nil {
		s.storeFailure(w, "createRoom", err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.StoreTimeout)
	defer cancel()
	s.createMu.Lock()
	id, err := st.create(ctx)
	s.createMu.Unlock()
	switch {
	case errors.Is(err, ErrRoomLimit):
		writeJSON(w, http.StatusServiceUnavailable, message{err.Error()})
	case err != nil:
		s.storeFailure(w, "createRoom", err)
	default:
		writeJSON(w, http.StatusOK, createAnswer{Message: "Task started successfully!", RoomID: id})
	}
}
