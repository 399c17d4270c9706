package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/beepvoice/router/internal/throttle"
	"github.com/beepvoice/router/room"
)

// Memberships: one key per user in a JetStream key-value bucket,
//
//	m.<token(user)>   {"c": conversation, "r": router}
//
// written by the router a join is made on (room.Membership.Joined), with
// the bucket's TTL as MEMBERSHIP_TTL, and watched by every router into a
// local cache (Lookup) that the room layer reads when a device connects.
// Revisions order the writes: every router applies them in the same order,
// so the last join wins everywhere.

// keyPrefix starts every membership key.
const keyPrefix = "m."

// memValue is the value of a membership key.
type memValue struct {
	Conv   string `json:"c"`
	Router string `json:"r"`
}

// memEntry is what the cache knows of one user.
type memEntry struct {
	conv string
	rev  uint64
	at   time.Time // when it was written
}

// membership is the Node's part of the membership bucket.
type membership struct {
	n *Node

	mu      sync.Mutex
	kv      jetstream.KeyValue // nil until open
	users   map[string]memEntry
	changed chan struct{} // closed and replaced on every update
	rev     uint64        // the last revision the watch delivered
	errLog  throttle.Gate

	lastSeq  atomic.Uint64 // the bucket's last revision at the last check
	restarts atomic.Uint64 // watches started again

	ctx    context.Context // ends at stop
	cancel context.CancelFunc
}

func (m *membership) init(n *Node) {
	m.n = n
	m.users = make(map[string]memEntry)
	m.changed = make(chan struct{})
	m.errLog.Every = 10 * time.Second
	m.ctx, m.cancel = context.WithCancel(context.Background())
}

// stop ends run.
func (m *membership) stop() { m.cancel() }

// open opens (creating it if needed) the bucket.
func (m *membership) open() (jetstream.KeyValue, error) {
	cfg := m.n.cfg
	js, err := jetstream.New(cfg.NATS)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(m.ctx, 2*cfg.StoreTimeout)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "memberships of the Beep routers' users (user → conversation)",
		History:     1,
		TTL:         cfg.MembershipTTL,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// watchCheck is how often the watch is compared with the bucket: a watch
// that has not delivered, by the next check, a revision the bucket had is
// started again (its consumer was lost with a NATS node, say).
const watchCheck = 2 * time.Second

// run opens the bucket, retrying while it is unavailable, and applies its
// updates until stop. The watch starts again, from the last revision
// applied, when the connection reconnects (to another NATS node, perhaps)
// and when it lags the bucket for a whole check.
func (m *membership) run() {
	defer m.n.bg.Done()
	var kv jetstream.KeyValue
	for {
		var err error
		if kv, err = m.open(); err == nil {
			break
		}
		m.n.log.Warn("cluster: membership bucket unavailable: memberships stay local until it is", "err", err, "retry", storeRetry)
		select {
		case <-m.ctx.Done():
			return
		case <-time.After(storeRetry):
		}
	}
	reconnected := m.n.nc.StatusChanged(nats.CONNECTED)
	defer m.n.nc.RemoveStatusListener(reconnected)
	check := time.NewTicker(watchCheck)
	defer check.Stop()
	var floor uint64 // a revision the bucket had before this watch started
	for first := true; ; first = false {
		w := m.watch(kv)
		if w == nil {
			return
		}
		if first {
			m.mu.Lock()
			m.kv = kv
			m.mu.Unlock()
			m.n.log.Info("cluster: membership bucket open", "bucket", m.n.cfg.Bucket)
		}
		why := m.follow(w, kv, reconnected, check.C, floor)
		if why == "" {
			_ = w.Stop()
			return
		}
		// Stopping deletes the old watch's consumer, which may have gone
		// with its NATS node: the JetStream API can take its whole
		// timeout (5 s) to say so. The new watch does not wait for it.
		m.n.bg.Add(1)
		go func() {
			defer m.n.bg.Done()
			_ = w.Stop()
		}()
		m.restarts.Add(1)
		floor = m.lastSeq.Load()
		m.n.log.Info("cluster: membership watch restarted", "why", why, "from", m.revision()+1)
	}
}

// watch starts watching the bucket after the last revision applied,
// retrying until it can or stop.
func (m *membership) watch(kv jetstream.KeyValue) jetstream.KeyWatcher {
	for {
		var opts []jetstream.WatchOpt
		if rev := m.revision(); rev > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(rev+1))
		}
		w, err := kv.WatchAll(m.ctx, opts...)
		if err == nil {
			return w
		}
		if m.ctx.Err() != nil {
			return nil
		}
		if ok, k := m.errLog.Allow(time.Now()); ok {
			m.n.log.Warn("cluster: cannot watch the membership bucket: retrying", "err", err, "suppressed", k)
		}
		select {
		case <-m.ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// follow applies w's updates until stop (it returns "") or until the
// watch should start again (it returns why). Once w delivered what the
// bucket held when it started, the revisions up to floor count as seen
// (the bucket's TTL may have removed the last of them).
func (m *membership) follow(w jetstream.KeyWatcher, kv jetstream.KeyValue, reconnected <-chan nats.Status, check <-chan time.Time, floor uint64) string {
	var behind uint64 // the bucket's last revision at the previous check, if the watch lagged
	for {
		select {
		case <-m.ctx.Done():
			return ""
		case e, ok := <-w.Updates():
			if !ok {
				return "watch ended"
			}
			if e == nil {
				m.seen(floor)
				continue
			}
			m.apply(e)
		case <-reconnected:
			return "NATS reconnected"
		case <-check:
			last, err := m.bucketLast(kv)
			if err != nil {
				continue // unknown: the next check tells
			}
			m.lastSeq.Store(last)
			rev := m.revision()
			if behind > 0 && rev < behind {
				return "watch lagging"
			}
			behind = 0
			if last > rev {
				behind = last
			}
		}
	}
}

// bucketLast returns the bucket's last revision.
func (m *membership) bucketLast(kv jetstream.KeyValue) (uint64, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.n.cfg.StoreTimeout)
	defer cancel()
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, errors.New("bucket status without stream info")
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// revision returns the last revision applied.
func (m *membership) revision() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// seen records that the watch delivered every revision up to rev.
func (m *membership) seen(rev uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev = max(m.rev, rev)
}

// lag returns how many revisions the watch was behind the bucket at the
// last check.
func (m *membership) lag() uint64 {
	last, rev := m.lastSeq.Load(), m.revision()
	if last > rev {
		return last - rev
	}
	return 0
}

// apply records one update of the bucket and, if another router wrote it,
// applies it to the rooms.
func (m *membership) apply(e jetstream.KeyValueEntry) {
	m.seen(e.Revision())
	key, ok := cutPrefix(e.Key())
	if !ok {
		return
	}
	user, ok := untoken(key)
	if !ok {
		return
	}
	var v memValue
	if e.Operation() == jetstream.KeyValuePut {
		if json.Unmarshal(e.Value(), &v) != nil {
			return // not ours
		}
	}
	m.mu.Lock()
	if old, had := m.users[user]; had && old.rev >= e.Revision() {
		m.mu.Unlock()
		return
	}
	if v.Conv == "" {
		delete(m.users, user)
	} else {
		m.users[user] = memEntry{conv: v.Conv, rev: e.Revision(), at: e.Created()}
	}
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	if v.Router == m.n.cfg.ID {
		return // applied here when it was made
	}
	m.n.log.Debug("cluster: membership made on another router", "user", user, "conversation", v.Conv, "revision", e.Revision(), "peer", v.Router)
	if err := m.n.rooms.Apply(user, v.Conv); err != nil && !errors.Is(err, room.ErrClosed) {
		m.n.log.Warn("cluster: membership made on another router not applied here", "user", user, "conversation", v.Conv, "err", err)
	}
}

func cutPrefix(k string) (string, bool) {
	if len(k) <= len(keyPrefix) || k[:len(keyPrefix)] != keyPrefix {
		return "", false
	}
	return k[len(keyPrefix):], true
}

// Joined implements room.Membership: it writes the join to the bucket
// (bounded by StoreTimeout; a failure is logged and counted, the join
// holds on this router) and to the local cache.
func (n *Node) Joined(userID, convID string) {
	m := &n.mem
	m.mu.Lock()
	kv := m.kv
	if e := m.users[userID]; e.conv != convID || kv == nil {
		m.users[userID] = memEntry{conv: convID, rev: e.rev, at: time.Now()}
	}
	m.mu.Unlock()
	if kv == nil {
		return
	}
	b, _ := json.Marshal(memValue{Conv: convID, Router: n.cfg.ID})
	ctx, cancel := n.storeContext()
	defer cancel()
	rev, err := kv.Put(ctx, keyPrefix+token(userID), b)
	if err != nil {
		n.count.storeErrors.Add(1)
		if ok, k := m.errLog.Allow(time.Now()); ok {
			n.log.Warn("cluster: membership not shared", "user", userID, "conversation", convID, "err", err, "suppressed", k)
		}
		return
	}
	m.mu.Lock()
	if e := m.users[userID]; e.rev < rev {
		m.users[userID] = memEntry{conv: convID, rev: rev, at: time.Now()}
	}
	m.mu.Unlock()
}

// Lookup implements room.Membership: the conversation the cache knows
// userID in, unless its membership is older than the TTL.
func (n *Node) Lookup(userID string) string {
	m := &n.mem
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.users[userID]
	if !ok || time.Since(e.at) >= n.cfg.MembershipTTL {
		return ""
	}
	return e.conv
}

// waitMember waits until the cache knows userID in convID, or ctx ends.
func (n *Node) waitMember(ctx context.Context, userID, convID string) error {
	m := &n.mem
	for {
		m.mu.Lock()
		ok, ch := m.users[userID].conv == convID, m.changed
		m.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("membership of %s in %s: %w", userID, convID, ctx.Err())
		}
	}
}

// waitOpen waits until the bucket is open, or ctx ends.
func (n *Node) waitOpen(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		n.mem.mu.Lock()
		open := n.mem.kv != nil
		n.mem.mu.Unlock()
		if open {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return errors.New("membership bucket not open")
		}
	}
}

// refresh rewrites, every refreshEvery, the memberships of the users with
// a connected device here that are older than half the TTL, so that the
// bucket keeps them while the users stay (a router that meets such a user
// later still knows its conversation). Each write is a compare-and-set on
// the revision the cache knows: a join made meanwhile on another router
// wins.
func (m *membership) refresh() {
	defer m.n.bg.Done()
	ttl := m.n.cfg.MembershipTTL
	t := time.NewTicker(refreshEvery(ttl))
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		m.refreshOnce(time.Now().Add(-ttl / 2))
	}
}

// refreshEvery is how often memberships are checked for refresh: a tenth
// of the TTL, from 1 s to 10 min.
func refreshEvery(ttl time.Duration) time.Duration {
	return min(max(ttl/10, time.Second), 10*time.Minute)
}

// refreshOnce rewrites the memberships of connected users written before
// older, and returns how many it rewrote.
func (m *membership) refreshOnce(older time.Time) (n int) {
	m.mu.Lock()
	kv := m.kv
	m.mu.Unlock()
	if kv == nil || m.n.rooms == nil {
		return 0
	}
	for user, conv := range m.n.rooms.ConnectedMembers() {
		m.mu.Lock()
		e, ok := m.users[user]
		m.mu.Unlock()
		if !ok || e.conv != conv || e.rev == 0 || e.at.After(older) {
			continue // not ours to refresh, not in the bucket yet, or recent
		}
		b, _ := json.Marshal(memValue{Conv: conv, Router: m.n.cfg.ID})
		ctx, cancel := m.n.storeContext()
		rev, err := kv.Update(ctx, keyPrefix+token(user), b, e.rev)
		cancel()
		if m.ctx.Err() != nil {
			return n
		}
		if err != nil {
			// A newer write (a join elsewhere) wins; anything else is
			// counted and tried again at the next check.
			if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				m.n.count.storeErrors.Add(1)
				if ok, k := m.errLog.Allow(time.Now()); ok {
					m.n.log.Warn("cluster: membership not refreshed", "user", user, "conversation", conv, "err", err, "suppressed", k)
				}
			}
			continue
		}
		n++
		m.mu.Lock()
		if cur := m.users[user]; cur.rev < rev {
			m.users[user] = memEntry{conv: conv, rev: rev, at: time.Now()}
		}
		m.mu.Unlock()
	}
	return n
}

// cacheSize returns the number of memberships the cache holds.
func (m *membership) cacheSize() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.users)
}
