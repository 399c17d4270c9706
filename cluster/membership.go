package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

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
	errLog  throttle.Gate

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

// run opens the bucket, retrying while it is unavailable, and applies its
// updates until stop.
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
	w, err := kv.WatchAll(m.ctx)
	if err != nil {
		m.n.log.Warn("cluster: cannot watch the membership bucket", "err", err)
		return
	}
	defer func() { _ = w.Stop() }()
	m.mu.Lock()
	m.kv = kv
	m.mu.Unlock()
	m.n.log.Info("cluster: membership bucket open", "bucket", m.n.cfg.Bucket)
	for {
		select {
		case <-m.ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				m.apply(e)
			}
		}
	}
}

// apply records one update of the bucket and, if another router wrote it,
// applies it to the rooms.
func (m *membership) apply(e jetstream.KeyValueEntry) {
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

// cacheSize returns the number of memberships the cache holds.
func (m *membership) cacheSize() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.users)
}
