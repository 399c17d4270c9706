package plugins

import (
	"sync"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins/protocol"
)

// itemBuf is the initial capacity of an item's packet buffer: an Opus packet
// at any usual bitrate fits, so buffers seldom grow.
const itemBuf = 512

// item is one queued packet or bite. Items come from a fixed pool and go
// back to it once sent, so queueing allocates nothing in the steady state.
type item struct {
	bite *pipeline.Bite // a bite, or nil for a packet

	// A packet.
	stream   uint32
	arrival  int64
	level    uint8
	hasLevel bool
	voice    bool
	buf      []byte
}

// queue is a bounded multi-producer, single-consumer queue of pooled items.
// Producers take a free item without blocking (none free: the caller drops
// and counts), fill it and put it on full, which has room for every item and
// so never blocks either.
type queue struct {
	free chan *item
	full chan *item
}

func newQueue(n int) *queue {
	q := &queue{free: make(chan *item, n), full: make(chan *item, n)}
	arena := make([]byte, n*itemBuf)
	for i := range n {
		// A full slice expression: a packet bigger than itemBuf reallocates
		// the item's buffer rather than writing over its neighbour.
		q.free <- &item{buf: arena[i*itemBuf : i*itemBuf : (i+1)*itemBuf]}
	}
	return q
}

// get returns a free item, or nil when all are in use.
func (q *queue) get() *item {
	select {
	case it := <-q.free:
		return it
	default:
		return nil
	}
}

// put queues a filled item. It never blocks: full has room for all items.
func (q *queue) put(it *item) { q.full <- it }

// release returns a consumed item to the pool.
func (q *queue) release(it *item) {
	it.bite = nil
	it.buf = it.buf[:0]
	q.free <- it
}

// streams are the streams the processors have opened: one published track
// in one conversation. Processors open and close them (rare events); the
// pump announces a stream to the plugin before its first packet, and tells
// it of the close after the stream's last packet.
type streams struct {
	mu     sync.Mutex
	open   map[uint32]*protocol.StreamInfo
	closed []uint32
	notify chan struct{} // a close is pending
	nextID uint32
}

func newStreams() *streams {
	return &streams{open: make(map[uint32]*protocol.StreamInfo), notify: make(chan struct{}, 1)}
}

// add registers a stream and returns its id.
func (s *streams) add(info *protocol.StreamInfo) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	if s.nextID == 0 {
		s.nextID = 1
	}
	info.Id = s.nextID
	s.open[info.Id] = info
	return info.Id
}

// lookup returns stream id's description, or nil once it is forgotten.
func (s *streams) lookup(id uint32) *protocol.StreamInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[id]
}

// close marks the stream ended and wakes the pump.
func (s *streams) close(id uint32) {
	s.mu.Lock()
	s.closed = append(s.closed, id)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// takeClosed returns the ids of the streams closed since the last call,
// appended to dst. They stay known to lookup until forget.
func (s *streams) takeClosed(dst []uint32) []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	dst = append(dst, s.closed...)
	s.closed = s.closed[:0]
	return dst
}

// forget drops closed streams once the plugin has been told.
func (s *streams) forget(ids []uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		delete(s.open, id)
	}
}
