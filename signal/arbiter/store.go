package arbiter

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The room store: a JetStream key-value bucket shared by every router on
// the same NATS. Two kinds of keys:
//
//	room.<roomId>      {"urlPath": "", …}    a room; "" while it is free
//	path.<sha256(P)>   <roomId>               the room claimed for urlPath P
//
// A claim takes a free room by compare-and-set on its revision (Update),
// then creates the path key (Create, which fails if the key exists): one
// free room goes to exactly one claim, and one path to one room. A claim
// that lost the path race gives its room back (compare-and-set again). The
// room record is the truth about a room being taken; the path key is the
// index getRoomId reads. What a crash between the two writes leaves (a room
// taken without its path key) is repaired at the next start.
//
// Every store keeps a local view of the rooms, fed by a watcher on the
// bucket, to find free rooms without scanning the bucket; the view may lag
// (another router's writes), which costs a failed compare-and-set, never a
// wrong answer. Before saying that no room is free, a claim waits until the
// view has caught up with the bucket.

// Errors of the store.
var (
	// ErrNoRoom: no free room is left to claim.
	ErrNoRoom = errors.New("no free room")
	// ErrRoomLimit: the store holds MaxRooms rooms already.
	ErrRoomLimit = errors.New("room limit reached")
	// ErrStoreUnavailable wraps every failure to reach the store.
	ErrStoreUnavailable = errors.New("room store unavailable")
	// ErrNoJetStream: the NATS server has no JetStream.
	ErrNoJetStream = errors.New("NATS has no JetStream (the Arbiter room store needs it)")
)

// Key prefixes in the bucket.
const (
	roomPrefix = "room."
	pathPrefix = "path."
)

// claimGrace is how long a room may be taken without its path key before
// the repair at start gives it back: longer than any claim in progress.
const claimGrace = time.Minute

// record is the value of a room key.
type record struct {
	// URLPath is the claimed path, "" while the room is free.
	URLPath string `json:"urlPath"`
	// Created and Claimed are Unix milliseconds.
	Created int64 `json:"created"`
	Claimed int64 `json:"claimed,omitempty"`
}

// viewEntry is what the local view knows of one room.
type viewEntry struct {
	rev  uint64
	path string // the claimed path, "" while the room is free
}

// store is the room store on one bucket.
type store struct {
	kv  jetstream.KeyValue
	log *slog.Logger
	max int // 0: no limit

	mu      sync.Mutex
	rooms   map[string]viewEntry // by room id
	nfree   int
	lastRev uint64        // highest revision the watcher delivered
	synced  chan struct{} // closed once the initial values are in
	changed chan struct{} // closed and replaced on every update

	watcher jetstream.KeyWatcher
	stop    context.CancelFunc // ends the watch's context
	done    chan struct{}      // closed when the watch goroutine ends
}

// openStore opens (creating it if needed) the bucket on nc and starts its
// watcher.
func openStore(ctx context.Context, nc *nats.Conn, bucket string, replicas, max int, log *slog.Logger) (*store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "Arbiter rooms of the Beep router",
		History:     1,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, ErrNoJetStream
		}
		return nil, fmt.Errorf("%w: bucket %s: %v", ErrStoreUnavailable, bucket, err)
	}
	// The watch lives until close: nats.go holds a goroutine on its
	// context until it ends.
	wctx, stop := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		stop()
		return nil, fmt.Errorf("%w: watch bucket %s: %v", ErrStoreUnavailable, bucket, err)
	}
	s := &store{
		kv: kv, log: log, max: max,
		rooms:   make(map[string]viewEntry),
		synced:  make(chan struct{}),
		changed: make(chan struct{}),
		watcher: w,
		stop:    stop,
		done:    make(chan struct{}),
	}
	go s.watch()
	select {
	case <-s.synced:
	case <-ctx.Done():
		s.close()
		return nil, fmt.Errorf("%w: bucket %s: initial values: %v", ErrStoreUnavailable, bucket, ctx.Err())
	}
	return s, nil
}

// close stops the watcher and waits for its goroutine.
func (s *store) close() {
	_ = s.watcher.Stop()
	s.stop()
	<-s.done
}

// watch feeds the local view until the watcher stops.
func (s *store) watch() {
	defer close(s.done)
	initial := true
	for e := range s.watcher.Updates() {
		if e == nil {
			if initial {
				initial = false
				close(s.synced)
			}
			continue
		}
		s.apply(e)
	}
}

// apply records one entry of the bucket in the view.
func (s *store) apply(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastRev = max(s.lastRev, e.Revision())
	if id, ok := strings.CutPrefix(e.Key(), roomPrefix); ok {
		var r record
		deleted := e.Operation() != jetstream.KeyValuePut
		if !deleted && json.Unmarshal(e.Value(), &r) != nil {
			deleted = true // not ours: ignore it
		}
		s.setLocked(id, e.Revision(), !deleted, r.URLPath)
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// setLocked records room id at revision rev, claimed for path ("": free),
// unless the view knows a newer revision. Callers hold s.mu.
func (s *store) setLocked(id string, rev uint64, exists bool, path string) {
	old, had := s.rooms[id]
	if had && old.rev >= rev {
		return
	}
	if had && old.path == "" {
		s.nfree--
	}
	if !exists {
		delete(s.rooms, id)
		return
	}
	s.rooms[id] = viewEntry{rev: rev, path: path}
	if path == "" {
		s.nfree++
	}
}

// set records what this store itself wrote or read.
func (s *store) set(id string, rev uint64, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(id, rev, true, path)
}

// takenFor says whether the view has a room taken for urlPath.
func (s *store) takenFor(urlPath string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.rooms {
		if e.path == urlPath {
			return true
		}
	}
	return false
}

// changes returns a channel closed at the view's next update.
func (s *store) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// counts returns the rooms and the free rooms in the view.
func (s *store) counts() (rooms, free int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rooms), s.nfree
}

// pickFree returns a free room of the view, chosen at random so that
// concurrent claims spread over the free rooms, or "" when none is.
func (s *store) pickFree() (string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nfree == 0 {
		return "", 0
	}
	n := mrand.IntN(s.nfree)
	for id, e := range s.rooms {
		if e.path != "" {
			continue
		}
		if n == 0 {
			return id, e.rev
		}
		n--
	}
	return "", 0
}

// catchUp waits until the view has every update the bucket had when it was
// called, or ctx ends.
func (s *store) catchUp(ctx context.Context) error {
	st, err := s.kv.Status(ctx)
	if err != nil {
		return unavailable("bucket status", err)
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return nil
	}
	last := bs.StreamInfo().State.LastSeq
	for {
		s.mu.Lock()
		seen, changed := s.lastRev, s.changed
		s.mu.Unlock()
		if seen >= last {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return unavailable("catch up with the bucket", ctx.Err())
		}
	}
}

// unavailable wraps err as ErrStoreUnavailable, saying what failed.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrStoreUnavailable, what, err)
}

// newRoomID returns a random UUID (version 4), as the original's SFU ids.
func newRoomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// pathKey is the key of urlPath's claim: a hash, since a path may hold any
// character and keys may not.
func pathKey(urlPath string) string {
	h := sha256.Sum256([]byte(urlPath))
	return pathPrefix + hex.EncodeToString(h[:])
}

// validRoomID reports whether id can be a room of the store: what
// newRoomID makes (checked loosely: hex digits and dashes), so that no
// client string reaches a key unchecked.
func validRoomID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i, c := range id {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		default:
			return false
		}
	}
	return true
}

// create makes a free room and returns its id. Past max rooms (in the
// view) it answers ErrRoomLimit.
func (s *store) create(ctx context.Context) (string, error) {
	if rooms, _ := s.counts(); s.max > 0 && rooms >= s.max {
		return "", fmt.Errorf("%w (%d)", ErrRoomLimit, s.max)
	}
	b, _ := json.Marshal(record{Created: time.Now().UnixMilli()})
	for range 3 { // a UUID collision is all but impossible; still, never overwrite
		id := newRoomID()
		rev, err := s.kv.Create(ctx, roomPrefix+id, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			return "", unavailable("create room", err)
		}
		s.set(id, rev, "")
		return id, nil
	}
	return "", unavailable("create room", errors.New("room ids collide"))
}

// lookup returns the room claimed for urlPath, or "" when there is none.
func (s *store) lookup(ctx context.Context, urlPath string) (string, error) {
	e, err := s.kv.Get(ctx, pathKey(urlPath))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", unavailable("get path", err)
	}
	return string(e.Value()), nil
}

// room returns room id's record; found is false when there is no such room.
func (s *store) room(ctx context.Context, id string) (r record, found bool, err error) {
	if !validRoomID(id) {
		return record{}, false, nil
	}
	e, err := s.kv.Get(ctx, roomPrefix+id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return record{}, false, nil
	}
	if err != nil {
		return record{}, false, unavailable("get room", err)
	}
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return record{}, false, nil
	}
	return r, true, nil
}

// maxClaimAttempts bounds the compare-and-set rounds of one claim: each
// lost round means another claim won a room, so this many are only lost
// under a storm of claims; the claim then fails as unavailable, and the
// client may try again.
const maxClaimAttempts = 200

// claimPathWait bounds how long a claim that found no free room waits for
// a claim of the same path in progress (its room taken, its path key not
// yet written) to finish. Longer only if that claim's router stopped
// between its two writes; the repair at the next start frees that room.
const claimPathWait = 5 * time.Second

// claim gives urlPath a room: the room already claimed for it, or a free
// one taken atomically. ErrNoRoom when no room is free.
func (s *store) claim(ctx context.Context, urlPath string) (string, error) {
	key := pathKey(urlPath)
	caughtUp := false
	var waitUntil time.Time
	for range maxClaimAttempts {
		if id, err := s.lookup(ctx, urlPath); err != nil || id != "" {
			return id, err
		}
		id, rev := s.pickFree()
		if id == "" {
			if !caughtUp {
				if err := s.catchUp(ctx); err != nil {
					return "", err
				}
				caughtUp = true
				continue
			}
			// A claim of this same path, here or on another router, may
			// have taken the last free room and not yet written the path's
			// key: wait for it rather than answer 404 to one of two visitors
			// who clicked "Create Room" together. (If it gives the room
			// back, the room is free again for this claim.)
			if waitUntil.IsZero() {
				waitUntil = time.Now().Add(claimPathWait)
			}
			if !s.takenFor(urlPath) || time.Now().After(waitUntil) {
				return "", ErrNoRoom
			}
			changed := s.changes()
			if id, err := s.lookup(ctx, urlPath); err != nil || id != "" {
				return id, err
			}
			timer := time.NewTimer(time.Until(waitUntil))
			select {
			case <-changed:
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return "", unavailable("claim", ctx.Err())
			}
			timer.Stop()
			continue
		}
		b, _ := json.Marshal(record{URLPath: urlPath, Claimed: time.Now().UnixMilli()})
		taken, err := s.kv.Update(ctx, roomPrefix+id, b, rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			s.refresh(ctx, id) // another claim took it, or the view lagged
			continue
		}
		if err != nil {
			return "", unavailable("take room", err)
		}
		s.set(id, taken, urlPath)
		_, err = s.kv.Create(ctx, key, []byte(id))
		if err == nil {
			return id, nil
		}
		// The path was claimed meanwhile (by a concurrent claim of the same
		// path), or the store failed: give the room back.
		if owner, lerr := s.lookup(ctx, urlPath); lerr == nil && owner == id {
			return id, nil // written after all (a retried publish)
		}
		s.release(ctx, id, taken)
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return "", unavailable("create path", err)
		}
	}
	return "", unavailable("claim", errors.New("too many concurrent claims"))
}

// refresh reads room id into the view.
func (s *store) refresh(ctx context.Context, id string) {
	e, err := s.kv.Get(ctx, roomPrefix+id)
	if err != nil {
		return
	}
	var r record
	if json.Unmarshal(e.Value(), &r) == nil {
		s.set(id, e.Revision(), r.URLPath)
	}
}

// release makes room id, taken at revision rev, free again. A failure is
// logged: the repair at the next start gives the room back.
func (s *store) release(ctx context.Context, id string, rev uint64) {
	b, _ := json.Marshal(record{Created: time.Now().UnixMilli()})
	freed, err := s.kv.Update(ctx, roomPrefix+id, b, rev)
	if err != nil {
		s.log.Warn("arbiter: could not give back a room taken for a path claimed meanwhile", "room", id, "err", err)
		return
	}
	s.set(id, freed, "")
}

// repair gives back the rooms taken more than claimGrace ago without a
// path key naming them (a router stopped between the two writes of a
// claim), so that no room stays taken and unreachable.
func (s *store) repair(ctx context.Context) (freed int, err error) {
	lister, err := s.kv.ListKeysFiltered(ctx, roomPrefix+">")
	if err != nil {
		return 0, unavailable("list rooms", err)
	}
	var ids []string
	for k := range lister.Keys() {
		ids = append(ids, strings.TrimPrefix(k, roomPrefix))
	}
	for _, id := range ids {
		e, err := s.kv.Get(ctx, roomPrefix+id)
		if err != nil {
			continue
		}
		var r record
		if json.Unmarshal(e.Value(), &r) != nil || r.URLPath == "" || time.Since(time.UnixMilli(r.Claimed)) < claimGrace {
			continue
		}
		owner, err := s.lookup(ctx, r.URLPath)
		if err != nil {
			return freed, err
		}
		if owner != id {
			s.release(ctx, id, e.Revision())
			freed++
		}
	}
	return freed, nil
}
