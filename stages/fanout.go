package stages

import (
	"runtime"
	"sync"

	"github.com/beepvoice/router/rtc"
)

// Large fan-outs are split across cores.
//
// A packet of a speaker in a room of hundreds is copied to every other
// member; on one goroutine the last copy leaves a whole fan-out after the
// first (≈ 9 µs a copy). When the forwarder's pool has idle workers, the
// track's goroutine hands them parts of the slots and writes the first part
// itself, then waits for them: each slot still gets the track's packets in
// order, from one goroutine at a time. A busy pool is not waited for: the
// track writes the parts nobody took, so sharding never adds a queue.

// maxShards bounds the workers of a pool and the parts of one fan-out.
const maxShards = 16

// pool runs parts of fan-outs on other cores.
type pool struct {
	workers int
	tasks   chan *shard // unbuffered: a send succeeds only to an idle worker
	quit    chan struct{}
	wg      sync.WaitGroup
}

// shard is a part of one packet's fan-out and what came of it.
type shard struct {
	job   fanout
	slots []*rtc.DownTrack
	done  *sync.WaitGroup

	written, failed uint64
	err             error
}

// newPool starts a pool with one worker per core beyond the first, or
// returns nil on one core.
func newPool() *pool {
	n := min(runtime.GOMAXPROCS(0)-1, maxShards)
	if n < 1 {
		return nil
	}
	p := &pool{workers: n, tasks: make(chan *shard), quit: make(chan struct{})}
	p.wg.Add(n)
	for range n {
		go p.work()
	}
	return p
}

// work runs shards, with a SendBuffer of its own, until the pool closes.
func (p *pool) work() {
	defer p.wg.Done()
	var buf rtc.SendBuffer
	for {
		select {
		case <-p.quit:
			return
		case sh := <-p.tasks:
			sh.written, sh.failed, sh.err = sh.job.run(sh.slots, &buf)
			sh.done.Done()
		}
	}
}

// close stops the workers.
func (p *pool) close() {
	close(p.quit)
	p.wg.Wait()
}

// shard hands the tail parts of slots, of size slots each, to idle
// workers, and returns the head the caller writes itself and how many
// parts went out (fp.shards[:n]; wait on fp.shardsDone).
func (fp *forwarderProc) shard(job *fanout, slots []*rtc.DownTrack, size int) (head []*rtc.DownTrack, n int) {
	p := fp.f.pool
	end := len(slots)
	for n < p.workers && end > size {
		sh := &fp.shards[n]
		sh.job, sh.slots, sh.done = *job, slots[max(end-size, size):end], &fp.shardsDone
		fp.shardsDone.Add(1)
		select {
		case p.tasks <- sh:
			n++
			end -= len(sh.slots)
		default:
			fp.shardsDone.Done()
			return slots[:end], n
		}
	}
	return slots[:end], n
}
