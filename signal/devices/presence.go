package devices

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
)

// Presence operations.
const (
	opHeartbeat = "hb"    // snapshot of the sender's devices (first part): replaces
	opMore      = "hb+"   // further part of the same snapshot: adds
	opJoin      = "join"  // a device subscribed on the sender
	opLeave     = "leave" // a device left the sender
	opBye       = "bye"   // the sender is closing
	opSync      = "sync"  // the sender started: please send a snapshot now
)

// maxOutbox bounds the presence messages waiting to be published; past it
// they are replaced by one snapshot, which supersedes them.
const maxOutbox = 1024

// presenceMsg is published on <prefix>presence.
type presenceMsg struct {
	Op       string        `json:"op"`
	Instance string        `json:"i"`
	User     string        `json:"u,omitempty"`
	Device   string        `json:"d,omitempty"`
	Since    int64         `json:"t,omitempty"`
	Devices  []presenceDev `json:"devs,omitempty"`
	// Beat is the sender's heartbeat in ms, so that instances configured
	// with different heartbeats expire each other correctly.
	Beat int64 `json:"hb,omitempty"`
}

type presenceDev struct {
	User   string `json:"u"`
	Device string `json:"d"`
	Since  int64  `json:"t"`
}

// remoteInstance is what this instance knows of another one.
type remoteInstance struct {
	seen   time.Time
	expiry time.Duration               // silent this long: gone
	devs   map[string]map[string]int64 // user → device → since
}

func (ri *remoteInstance) add(u, d string, since int64) {
	ds := ri.devs[u]
	if ds == nil {
		ds = make(map[string]int64)
		ri.devs[u] = ds
	}
	ds[d] = since
}

func (s *Service) presenceSubject() string { return s.prefix + "presence" }

func (s *Service) deviceSubject(user, device string) string {
	return s.prefix + "dev." + subjectToken(user) + "." + subjectToken(device)
}

// subjectToken escapes id into one NATS subject token: bytes other than
// ASCII letters, digits, '-' and '_' become %XX (so '.', '*', '>', spaces
// and '%' itself can never reach the subject). The mapping is injective.
func subjectToken(id string) string {
	safe := func(c byte) bool {
		return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_'
	}
	clean := id != ""
	for i := 0; i < len(id) && clean; i++ {
		clean = safe(id[i])
	}
	if clean {
		return id
	}
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(id) * 3)
	if id == "" {
		return "%"
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if safe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexdig[c>>4])
		b.WriteByte(hexdig[c&15])
	}
	return b.String()
}

// announceLocked queues a presence message for the presence loop, which
// publishes in queue order (so the others see joins and leaves in the order
// they happened here).
func (s *Service) announceLocked(m presenceMsg) {
	if s.nc == nil || s.closed {
		return
	}
	if len(s.outbox) >= maxOutbox {
		s.outbox = append(s.outbox[:0], s.snapshotLocked())
	} else {
		s.outbox = append(s.outbox, m)
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// presenceLoop publishes queued presence messages and a snapshot every
// heartbeat, and drops instances not heard from for too long.
func (s *Service) presenceLoop() {
	defer s.bg.Done()
	t := time.NewTicker(s.heartbeat)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.flushOutbox() // the goodbye queued by Close
			return
		case <-s.kick:
		case now := <-t.C:
			s.mu.Lock()
			for id, ri := range s.remote {
				if now.Sub(ri.seen) > ri.expiry {
					delete(s.remote, id)
					s.log.Info("instance expired", "peer", id)
				}
			}
			s.announceLocked(s.snapshotLocked())
			s.mu.Unlock()
		}
		s.flushOutbox()
	}
}

func (s *Service) flushOutbox() {
	s.mu.Lock()
	out := s.outbox
	s.outbox = nil
	s.mu.Unlock()
	for _, m := range out {
		s.publish(m)
	}
}

// publish sends m, splitting a large snapshot into parts that fit the NATS
// max payload.
func (s *Service) publish(m presenceMsg) {
	m.Instance = s.instance
	m.Beat = s.heartbeat.Milliseconds()
	var msgs []presenceMsg
	if m.Op == opHeartbeat {
		limit := 256 << 10
		if mp := int(s.nc.MaxPayload()); mp > 0 && mp/2 < limit {
			limit = mp / 2
		}
		part := presenceMsg{Op: opHeartbeat, Instance: s.instance, Beat: m.Beat}
		size := 0
		for _, d := range m.Devices {
			n := 6*(len(d.User)+len(d.Device)) + 40 // bound of its JSON size
			if size+n > limit && len(part.Devices) > 0 {
				msgs = append(msgs, part)
				part = presenceMsg{Op: opMore, Instance: s.instance, Beat: m.Beat}
				size = 0
			}
			part.Devices = append(part.Devices, d)
			size += n
		}
		msgs = append(msgs, part)
	} else {
		msgs = []presenceMsg{m}
	}
	for _, pm := range msgs {
		b, err := json.Marshal(pm)
		if err == nil {
			err = s.nc.Publish(s.presenceSubject(), b)
		}
		s.mu.Lock()
		failing := s.natsFailing
		s.natsFailing = err != nil
		s.mu.Unlock()
		switch {
		case err != nil && !failing:
			s.log.Warn("publish presence failed", "op", pm.Op, "err", err)
		case err != nil:
			s.log.Debug("publish presence failed", "op", pm.Op, "err", err)
		case failing:
			s.log.Info("publish presence recovered")
		}
	}
}

// onPresence applies another instance's presence message.
func (s *Service) onPresence(m *nats.Msg) {
	var pm presenceMsg
	if err := json.Unmarshal(m.Data, &pm); err != nil {
		s.log.Debug("ignoring malformed presence message", "err", err)
		return
	}
	if pm.Instance == "" || pm.Instance == s.instance {
		return
	}
	now := time.Now()
	var stale []*nats.Subscription
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	ri := s.remote[pm.Instance]
	if ri == nil && pm.Op != opBye && pm.Op != opLeave {
		ri = &remoteInstance{devs: make(map[string]map[string]int64)}
		s.remote[pm.Instance] = ri
		s.log.Info("instance joined", "peer", pm.Instance)
	}
	if ri != nil {
		ri.seen = now
		ri.expiry = s.expiry
		if pm.Beat > 0 && pm.Beat < time.Hour.Milliseconds() {
			ri.expiry = expiryBeats * time.Duration(pm.Beat) * time.Millisecond
		}
	}
	switch pm.Op {
	case opHeartbeat, opMore:
		if pm.Op == opHeartbeat {
			ri.devs = make(map[string]map[string]int64)
		}
		for _, d := range pm.Devices {
			if claim.ValidID(d.User) && claim.ValidID(d.Device) {
				ri.add(d.User, d.Device, d.Since)
			}
		}
	case opJoin:
		if !claim.ValidID(pm.User) || !claim.ValidID(pm.Device) {
			break
		}
		ri.add(pm.User, pm.Device, pm.Since)
		// A newer subscription elsewhere replaces ours.
		if e := s.local[pm.User][pm.Device]; e != nil {
			cur := e.cur
			if pm.Since > cur.since || pm.Since == cur.since && pm.Instance > s.instance {
				cur.cancel(errReplacedRemote)
				stale = append(stale, s.detachLocked(cur))
				s.log.Info("stream replaced by another instance", "user", cur.user, "device", cur.device, "peer", pm.Instance)
			}
		}
	case opLeave:
		if ri != nil {
			if ds := ri.devs[pm.User]; ds != nil {
				delete(ds, pm.Device)
				if len(ds) == 0 {
					delete(ri.devs, pm.User)
				}
			}
		}
	case opBye:
		if ri != nil {
			delete(s.remote, pm.Instance)
			s.log.Info("instance left", "peer", pm.Instance)
		}
	case opSync:
		s.announceLocked(s.snapshotLocked())
	default:
		s.log.Debug("ignoring unknown presence op", "op", pm.Op)
	}
	s.mu.Unlock()
	for _, sub := range stale {
		if err := unsubscribe(sub); err != nil {
			s.log.Warn("unsubscribe device subject", "err", err)
		}
	}
}
