package devices

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/sse"
)

// NATS headers and replies of a cross-instance delivery.
const (
	hdrID     = "Devsig-Id"
	hdrEvent  = "Devsig-Event"
	replyOK   = "ok"
	replyFull = "full"
)

// result is the outcome of a delivery.
type result int

const (
	delivered    result = iota // queued to a live stream: 200
	notConnected               // no such device: 404
	overflowed                 // the stream was too slow and got closed: 404
	unavailable                // NATS failed or the service is closed: 503
)

func (r result) String() string {
	switch r {
	case delivered:
		return "delivered"
	case notConnected:
		return "not connected"
	case overflowed:
		return "overflowed"
	case unavailable:
		return "unavailable"
	}
	return fmt.Sprintf("result(%d)", int(r))
}

func (s *Service) handleSubscribe(w http.ResponseWriter, r *http.Request, c claim.Claim) {
	s.serveStream(w, r, c)
}

func (s *Service) handleSubscribeLegacy(w http.ResponseWriter, r *http.Request, c claim.Claim) {
	v := mux.Vars(r)
	if v["user"] != c.UserID || v["device"] != c.ClientID {
		http.Error(w, "path does not match the caller's claim", http.StatusForbidden)
		return
	}
	s.serveStream(w, r, c)
}

// serveStream runs one SSE stream until the client goes away, a newer
// subscription replaces it, it overflows, or the service closes.
func (s *Service) serveStream(w http.ResponseWriter, r *http.Request, c claim.Claim) {
	ctx, cancel := context.WithCancelCause(r.Context())
	st := &stream{
		user:   c.UserID,
		device: c.ClientID,
		since:  time.Now().UnixNano(),
		queue:  make(chan []byte, s.queueLen),
		ctx:    ctx,
		cancel: cancel,
	}
	if err := s.attach(st); err != nil {
		cancel(err)
		code, limited := http.StatusServiceUnavailable, true
		switch {
		case errors.Is(err, errStreamsPerUser):
			s.refusedUser.Add(1)
			code = http.StatusTooManyRequests
		case errors.Is(err, errStreamsTotal):
			s.refusedTotal.Add(1)
		default:
			limited = false // closed
		}
		if limited {
			w.Header().Set("Retry-After", "5")
			if ok, n := s.refuseLog.Allow(time.Now()); ok {
				s.log.Warn("event stream refused", "user", st.user, "err", err,
					"per_user", s.maxUser, "total", s.maxTotal, "suppressed", n)
			}
		}
		http.Error(w, err.Error(), code)
		return
	}
	defer s.streams.Done()
	defer func() {
		cancel(context.Canceled)
		s.detach(st)
		s.release(st.user)
	}()
	log := s.log.With("user", st.user, "device", st.device)

	if s.nc != nil {
		// Make sure the delivery subscription reached the server before the
		// client sees the stream open.
		if err := s.nc.FlushTimeout(time.Second); err != nil {
			log.Warn("nats flush after subscribe", "err", err)
		}
	}

	stream := sse.Open(ctx, w, writeTimeout)
	defer stream.Close()
	write := stream.Write
	var sent int
	start := time.Now()
	log.Info("stream opened", "remote", r.RemoteAddr)
	err := write([]byte(": open\n\n"))
	if errors.Is(err, http.ErrNotSupported) {
		log.Error("response writer cannot flush; SSE needs an unbuffered writer")
	}

	ticker := time.NewTicker(s.keepAlive)
	defer ticker.Stop()
	for err == nil {
		select {
		case <-ctx.Done():
			err = context.Cause(ctx)
		case frame := <-st.queue:
			if err = write(frame); err == nil {
				sent++
			}
		case <-ticker.C:
			err = write([]byte(": keep-alive\n\n"))
		}
	}
	if cause := context.Cause(ctx); cause != nil {
		err = cause // the reason beats the write error it caused
	}
	log.Info("stream closed", "reason", err.Error(), "events", sent, "duration", time.Since(start).Round(time.Millisecond))
}

// attach makes st the current stream of its device, replacing an older one,
// and (with NATS) subscribes to the device's delivery subject and announces
// the device to the other instances.
func (s *Service) attach(st *stream) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errServiceClosed
	}
	replacing := s.local[st.user][st.device] != nil
	if s.maxTotal > 0 && s.open >= s.maxTotal {
		s.mu.Unlock()
		return errStreamsTotal
	}
	if s.maxUser > 0 && !replacing && s.openBy[st.user] >= s.maxUser {
		s.mu.Unlock()
		return errStreamsPerUser
	}
	s.open++
	s.openBy[st.user]++
	s.streams.Add(1)
	devs := s.local[st.user]
	if devs == nil {
		devs = make(map[string]*entry)
		s.local[st.user] = devs
	}
	if e := devs[st.device]; e != nil {
		old := e.cur
		e.cur = st
		old.cancel(errReplaced)
		if e.ready {
			s.announceLocked(presenceMsg{Op: opJoin, User: st.user, Device: st.device, Since: st.since})
		} // else the pending subscription announces e.cur when it is in place
		s.mu.Unlock()
		return nil
	}
	e := &entry{user: st.user, device: st.device, cur: st, ready: s.nc == nil}
	devs[st.device] = e
	s.mu.Unlock()
	if s.nc == nil {
		return nil
	}

	// Subscribe outside the lock; the handler checks that e is still current.
	sub, err := s.nc.Subscribe(s.deviceSubject(st.user, st.device), s.onDeliver(e))
	if err != nil {
		s.log.Warn("subscribe device subject; the device is reachable on this instance only",
			"user", st.user, "device", st.device, "err", err)
	}
	s.mu.Lock()
	var stale *nats.Subscription
	if !s.closed && s.local[e.user][e.device] == e {
		e.sub, e.ready = sub, true
		// Announced after the SUB went into the connection's buffer, so
		// an instance that sees the join can already reach the device.
		s.announceLocked(presenceMsg{Op: opJoin, User: e.user, Device: e.device, Since: e.cur.since})
	} else {
		stale = sub // detached (or closed) meanwhile
	}
	s.mu.Unlock()
	if err := unsubscribe(stale); err != nil {
		s.log.Warn("unsubscribe device subject", "err", err)
	}
	return nil
}

// release gives back the place of one of user's streams taken by attach.
func (s *Service) release(user string) {
	s.mu.Lock()
	s.open--
	if s.openBy[user]--; s.openBy[user] <= 0 {
		delete(s.openBy, user)
	}
	s.mu.Unlock()
}

// detach removes st if it is still its device's current stream.
func (s *Service) detach(st *stream) {
	s.mu.Lock()
	sub := s.detachLocked(st)
	s.mu.Unlock()
	if err := unsubscribe(sub); err != nil {
		s.log.Warn("unsubscribe device subject", "err", err)
	}
}

// detachLocked removes st if it is still its device's current stream and
// returns the subscription the caller must unsubscribe after unlocking.
func (s *Service) detachLocked(st *stream) *nats.Subscription {
	devs := s.local[st.user]
	e := devs[st.device]
	if e == nil || e.cur != st {
		return nil
	}
	delete(devs, st.device)
	if len(devs) == 0 {
		delete(s.local, st.user)
	}
	if e.ready {
		s.announceLocked(presenceMsg{Op: opLeave, User: st.user, Device: st.device})
	}
	return e.sub
}

// enqueueLocked queues frame on e's current stream without blocking. When
// the queue is full the stream is closed and detached; the returned
// subscription must then be unsubscribed after unlocking.
func (s *Service) enqueueLocked(e *entry, frame []byte) (result, *nats.Subscription) {
	st := e.cur
	if st.ctx.Err() != nil { // client gone, handler not yet detached
		return notConnected, nil
	}
	select {
	case st.queue <- frame:
		return delivered, nil
	default:
		st.cancel(errOverflow)
		s.log.Warn("stream too slow, closing it", "user", st.user, "device", st.device, "queue", cap(st.queue))
		return overflowed, s.detachLocked(st)
	}
}

// deliver sends an event to a device, locally or through NATS.
func (s *Service) deliver(ctx context.Context, user, device, id, event, data string) result {
	frame := formatEvent(id, event, data)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return unavailable
	}
	if e := s.local[user][device]; e != nil {
		res, sub := s.enqueueLocked(e, frame)
		s.mu.Unlock()
		if err := unsubscribe(sub); err != nil {
			s.log.Warn("unsubscribe device subject", "err", err)
		}
		return res
	}
	s.mu.Unlock()
	if s.nc == nil {
		return notConnected
	}

	msg := nats.NewMsg(s.deviceSubject(user, device))
	msg.Header.Set(hdrID, id)
	if event != "" {
		msg.Header.Set(hdrEvent, event)
	}
	msg.Data = []byte(data)
	ctx, cancel := context.WithTimeout(ctx, s.reqTO)
	defer cancel()
	reply, err := s.nc.RequestMsgWithContext(ctx, msg)
	switch {
	case err == nil && string(reply.Data) == replyOK:
		return delivered
	case err == nil:
		return overflowed
	case errors.Is(err, nats.ErrNoResponders):
		return notConnected
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		s.log.Warn("cross-instance delivery timed out", "user", user, "device", device, "timeout", s.reqTO)
		return notConnected
	case errors.Is(err, context.Canceled):
		return notConnected // the poster went away; nobody reads the answer
	default:
		s.log.Warn("cross-instance delivery failed", "user", user, "device", device, "err", err)
		return unavailable
	}
}

// onDeliver returns the handler of e's delivery subject.
func (s *Service) onDeliver(e *entry) nats.MsgHandler {
	return func(m *nats.Msg) {
		id, event := m.Header.Get(hdrID), m.Header.Get(hdrEvent)
		if m.Reply == "" || len(m.Data) == 0 || !validEvent(id) || id == "" || !validEvent(event) {
			s.log.Debug("ignoring malformed delivery", "subject", m.Subject)
			return
		}
		frame := formatEvent(id, event, string(m.Data))
		s.mu.Lock()
		if s.closed || s.local[e.user][e.device] != e {
			// Stale subscription: stay silent so that the instance that
			// does hold the device (if any) answers.
			s.mu.Unlock()
			return
		}
		res, sub := s.enqueueLocked(e, frame)
		s.mu.Unlock()
		if err := unsubscribe(sub); err != nil {
			s.log.Warn("unsubscribe device subject", "err", err)
		}
		reply := replyOK
		switch res {
		case delivered:
		case overflowed:
			reply = replyFull
		default:
			return
		}
		if err := m.Respond([]byte(reply)); err != nil {
			s.log.Debug("reply to delivery", "err", err)
		}
	}
}

// postBody is the body of POST /user/{user}/device/{device}.
type postBody struct {
	Data  string `json:"data"`
	Event string `json:"event"`
}

func (s *Service) handlePost(w http.ResponseWriter, r *http.Request, from claim.Claim) {
	v := mux.Vars(r)
	user, device := v["user"], v["device"]
	if !validID(user) || !validID(device) {
		http.Error(w, "invalid user or device id", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.maxData)))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	var p postBody
	if err := json.Unmarshal(body, &p); err != nil {
		http.Error(w, "body must be a JSON object {\"data\": string, \"event\": string}", http.StatusBadRequest)
		return
	}
	if p.Data == "" {
		http.Error(w, "no data to be sent", http.StatusBadRequest)
		return
	}
	if !validEvent(p.Event) {
		http.Error(w, "invalid event name", http.StatusBadRequest)
		return
	}
	res := s.deliver(r.Context(), user, device, from.String(), p.Event, p.Data)
	s.log.Debug("post", "from", from.String(), "user", user, "device", device, "bytes", len(p.Data), "result", res)
	switch res {
	case delivered:
		w.WriteHeader(http.StatusOK)
	case notConnected, overflowed:
		http.Error(w, "device not connected", http.StatusNotFound)
	default:
		http.Error(w, "signalling unavailable", http.StatusServiceUnavailable)
	}
}

func (s *Service) handleDevices(w http.ResponseWriter, r *http.Request, _ claim.Claim) {
	user := mux.Vars(r)["user"]
	if !validID(user) {
		http.Error(w, "invalid user id", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(s.Devices(user))
}

// Devices returns the sorted ids of user's devices connected now to any
// instance; never nil.
func (s *Service) Devices(user string) []string {
	now := time.Now()
	set := make(map[string]struct{})
	s.mu.Lock()
	for d := range s.local[user] {
		set[d] = struct{}{}
	}
	for _, ri := range s.remote {
		if now.Sub(ri.seen) > ri.expiry {
			continue
		}
		for d := range ri.devs[user] {
			set[d] = struct{}{}
		}
	}
	s.mu.Unlock()
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	sort.Strings(out)
	return out
}

// formatEvent renders one SSE event. id and event must be single-line
// (checked by the callers); data is split on CRLF, LF and CR into data:
// lines, so that the client reassembles it with LF separators.
func formatEvent(id, event, data string) []byte {
	var b bytes.Buffer
	b.Grow(len(id) + len(event) + len(data) + 32)
	b.WriteString("id: ")
	b.WriteString(id)
	b.WriteByte('\n')
	if event != "" {
		b.WriteString("event: ")
		b.WriteString(event)
		b.WriteByte('\n')
	}
	for {
		i := strings.IndexAny(data, "\r\n")
		if i < 0 {
			break
		}
		b.WriteString("data: ")
		b.WriteString(data[:i])
		b.WriteByte('\n')
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	b.WriteString("data: ")
	b.WriteString(data)
	b.WriteString("\n\n")
	return b.Bytes()
}
