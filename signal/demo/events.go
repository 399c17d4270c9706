package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/beepvoice/router/internal/sse"
)

// stream is one open /demo/events response. Its fields after conv are
// guarded by Server.mu.
type stream struct {
	conv   string
	member *member // nil: a watcher only

	wake         chan struct{} // cap 1: something is pending
	pending      []*bite
	membersDirty bool
	lagged       bool // too much pending: the stream is cut, the client resumes
}

// member is a page listed in a conversation.
type member struct {
	User     string `json:"user"`
	Client   string `json:"client"`
	Name     string `json:"name"`
	Speaking bool   `json:"speaking"`
}

func (st *stream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// pushLocked queues b for the stream.
func (st *stream) pushLocked(b *bite) {
	if st.lagged {
		return
	}
	if len(st.pending) >= pendingLimit {
		st.lagged, st.pending = true, nil
	} else {
		st.pending = append(st.pending, b)
	}
	st.signal()
}

// membersChangedLocked tells every stream of conv to send the member list.
func (s *Server) membersChangedLocked(conv string) {
	for st := range s.streams {
		if st.conv == conv {
			st.membersDirty = true
			st.signal()
		}
	}
}

// membersLocked returns conv's member list.
func (s *Server) membersLocked(conv string) []member {
	list := make([]member, 0, len(s.members[conv]))
	for _, st := range s.members[conv] {
		list = append(list, *st.member)
	}
	return list
}

// attach registers st; with a member, lists it (replacing an older stream of
// the same user and client).
func (s *Server) attach(st *stream) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return errors.New("demo is shutting down")
	case len(s.streams) >= maxStreams:
		return errors.New("too many open event streams")
	}
	if st.member != nil {
		list := s.members[st.conv]
		same := func(o *stream) bool {
			return o.member.User == st.member.User && o.member.Client == st.member.Client
		}
		others := 0
		for _, o := range list {
			if !same(o) {
				others++
			}
		}
		if others >= maxMembers {
			return errors.New("too many members in this conversation")
		}
		kept := make([]*stream, 0, others+1)
		for _, o := range list {
			if same(o) {
				o.member = nil // the page reconnected: its old stream is a watcher now
				continue
			}
			kept = append(kept, o)
		}
		s.members[st.conv] = append(kept, st)
	}
	s.streams[st] = struct{}{}
	s.wg.Add(1)
	st.membersDirty = true
	st.signal()
	if st.member != nil {
		s.membersChangedLocked(st.conv)
	}
	return nil
}

// detach unregisters st and unlists its member.
func (s *Server) detach(st *stream) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, st)
	if st.member == nil {
		return
	}
	list := s.members[st.conv]
	for i, o := range list {
		if o == st {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.members, st.conv)
	} else {
		s.members[st.conv] = list
	}
	s.membersChangedLocked(st.conv)
}

// validID accepts printable ids of reasonable length.
func validID(id string, limit int) bool {
	if id == "" || len(id) > limit || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// cleanName trims a display name to maxName printable runes.
func cleanName(name string) string {
	var b strings.Builder
	n := 0
	for _, r := range strings.TrimSpace(name) {
		if n == maxName {
			break
		}
		if !unicode.IsPrint(r) {
			r = ' '
		}
		b.WriteRune(r)
		n++
	}
	return strings.TrimSpace(b.String())
}

// events serves the Server-Sent Events stream of one conversation.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	conv := q.Get("conversation")
	if !validID(conv, maxConversation) {
		http.Error(w, "want ?conversation= (printable, at most 256 bytes)", http.StatusBadRequest)
		return
	}
	st := &stream{conv: conv, wake: make(chan struct{}, 1)}
	if user, client := q.Get("user"), q.Get("client"); user != "" || client != "" {
		name := cleanName(q.Get("name"))
		if !validID(user, maxID) || !validID(client, maxID) || name == "" {
			http.Error(w, "a member needs user, client and name", http.StatusBadRequest)
			return
		}
		st.member = &member{User: user, Client: client, Name: name}
	}
	var after uint64
	resume := false
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		if n, err := strconv.ParseUint(id, 10, 64); err == nil {
			after, resume = n, true
		}
	}
	if err := s.attach(st); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer s.wg.Done()
	defer s.detach(st)

	// The stream ends when the client goes or the server closes.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stopOnClose := context.AfterFunc(s.ctx, cancel)
	defer stopOnClose()
	stream := sse.Open(ctx, w, writeTimeout)
	defer func() {
		cancel()
		stream.Close()
	}()
	write := stream.Write

	s.mu.Lock()
	if resume {
		st.pending = append(s.backlogLocked(conv, after), st.pending...)
	} else {
		st.pending = append(s.backlogLocked(conv, 0), st.pending...)
	}
	// A bite pushed between attach and here is in both lists; keep the first.
	st.pending = dedupe(st.pending)
	s.mu.Unlock()

	err := write([]byte("retry: 2000\n\n"))
	ticker := time.NewTicker(keepAlive)
	defer ticker.Stop()
	// A member's slots are looked up now and then (the media core has no
	// change notification) and sent when they changed.
	var slotTick <-chan time.Time
	var lastSlots []string
	if s.slots != nil && st.member != nil {
		t := time.NewTicker(slotsEvery)
		defer t.Stop()
		slotTick = t.C
	}
	for err == nil {
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-ticker.C:
			err = write([]byte(": keep-alive\n\n"))
		case <-slotTick:
			now := s.slots(st.member.User, st.member.Client)
			if now != nil && !slices.Equal(now, lastSlots) {
				lastSlots = now
				err = write(appendEvent(nil, "", "slots", now))
			}
		case <-st.wake:
			s.mu.Lock()
			bites, dirty, lagged := st.pending, st.membersDirty, st.lagged
			st.pending, st.membersDirty = nil, false
			var members []member
			if dirty {
				members = s.membersLocked(conv)
			}
			s.mu.Unlock()
			if lagged {
				err = errors.New("client too slow")
				break
			}
			var buf []byte
			if dirty {
				buf = appendEvent(buf, "", "members", members)
			}
			for _, b := range bites {
				buf = appendEvent(buf, strconv.FormatUint(b.ID, 10), "bite", b)
			}
			err = write(buf)
		}
	}
}

// dedupe drops repeated bites from an id-ordered-ish list, keeping the
// first of each and the order.
func dedupe(list []*bite) []*bite {
	seen := make(map[uint64]bool, len(list))
	out := list[:0]
	for _, b := range list {
		if !seen[b.ID] {
			seen[b.ID] = true
			out = append(out, b)
		}
	}
	return out
}

// appendEvent appends one SSE event with JSON data.
func appendEvent(buf []byte, id, event string, v any) []byte {
	data, err := json.Marshal(v)
	if err != nil {
		data = []byte("null")
	}
	if id != "" {
		buf = append(buf, "id: "...)
		buf = append(buf, id...)
		buf = append(buf, '\n')
	}
	buf = append(buf, "event: "...)
	buf = append(buf, event...)
	buf = append(buf, "\ndata: "...)
	buf = append(buf, data...) // JSON from Marshal has no raw newlines
	return append(buf, "\n\n"...)
}

// speakingRequest is the body of POST /demo/speaking.
type speakingRequest struct {
	Conversation string `json:"conversation"`
	User         string `json:"user"`
	Client       string `json:"client"`
	Speaking     bool   `json:"speaking"`
}

// speaking records whether a member says it is speaking now.
func (s *Server) speaking(w http.ResponseWriter, r *http.Request) {
	var req speakingRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 4096))
	if err := dec.Decode(&req); err != nil {
		http.Error(w, fmt.Sprintf("bad JSON: %v", err), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.members[req.Conversation] {
		m := st.member
		if m.User == req.User && m.Client == req.Client {
			if m.Speaking != req.Speaking {
				m.Speaking = req.Speaking
				s.membersChangedLocked(req.Conversation)
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	http.Error(w, "not a member: open /demo/events with user, client and name first", http.StatusNotFound)
}
