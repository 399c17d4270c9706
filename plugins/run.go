package plugins

import (
	"errors"
	"fmt"
	"time"

	"github.com/beepvoice/router/plugins/protocol"
)

// maxBatchBytes bounds the payload of one stream message (bites are big).
const maxBatchBytes = 1 << 20

// run is the stage's goroutine: it feeds the plugin, and restarts it with
// backoff when it fails, until the stage stops or the plugin is disabled.
func (st *Stage) run(p *process) {
	defer close(st.done)
	pm := newPump(st)
	failures := 0
	for {
		if p != nil {
			started := time.Now()
			err := pm.serve(p)
			if st.stopping.Load() {
				return
			}
			st.stats.failures.Add(1)
			if time.Since(started) >= st.s.StableAfter.D() {
				failures = 0
			}
			st.log.Error("plugin failed", "pid", p.pid, "err", err)
		}
		failures++
		if failures > st.s.MaxRestarts {
			st.disabled.Store(true)
			st.wantPackets.Store(false)
			st.wantBites.Store(false)
			st.log.Error("plugin disabled: it failed too often; its stage now passes packets through untouched",
				"consecutive_failures", failures, "max_restarts", st.s.MaxRestarts)
			pm.idle(nil)
			return
		}
		delay := st.s.Backoff.D() << (failures - 1)
		if delay <= 0 || delay > st.s.MaxBackoff.D() {
			delay = st.s.MaxBackoff.D()
		}
		st.log.Info("plugin restarting", "in", delay, "attempt", failures)
		t := time.NewTimer(delay)
		stopped := !pm.idle(t.C)
		t.Stop()
		if stopped {
			return
		}
		var err error
		if p, err = st.start(); err != nil {
			st.log.Error("plugin restart failed", "err", err)
			p = nil
		}
	}
}

// pump turns queued items into stream messages. It is used by the stage's
// goroutine only, and reuses its messages.
type pump struct {
	st        *Stage
	announced map[uint32]bool // streams the current process has been told of
	msg       protocol.HostBatch
	pkts      []*protocol.Packet // reusable packet messages
	held      []*item            // items msg refers to, released after the send
	bytes     int
	closed    []uint32
	dropped   uint64 // st.stats.dropped when last reported
	timer     *time.Timer
}

func newPump(st *Stage) *pump {
	pm := &pump{st: st, pkts: make([]*protocol.Packet, st.s.Batch), timer: time.NewTimer(time.Hour)}
	for i := range pm.pkts {
		pm.pkts[i] = &protocol.Packet{}
	}
	pm.timer.Stop()
	return pm
}

// serve feeds process p until it fails (returning why) or the stage stops
// (returning nil once p is shut down).
func (pm *pump) serve(p *process) error {
	st := pm.st
	pm.announced = make(map[uint32]bool)
	pm.reset()
	for {
		select {
		case it := <-st.q.full:
			if err := pm.collect(p, it); err != nil {
				p.shutdown(false)
				return p.cause(err)
			}
		case <-st.streams.notify:
			if err := pm.sendClosed(p); err != nil {
				p.shutdown(false)
				return p.cause(err)
			}
		case <-p.failed:
			p.shutdown(false)
			return p.err
		case <-st.stop:
			return pm.finish(p)
		}
	}
}

// collect adds it and whatever else arrives within the flush time to one
// message, and sends it.
func (pm *pump) collect(p *process, it *item) error {
	st := pm.st
	pm.add(it)
	if pm.full() {
		return pm.send(p)
	}
	// Take what is already queued, then wait up to flush for more.
	armed := false
	for !pm.full() {
		select {
		case it := <-st.q.full:
			pm.add(it)
			continue
		default:
		}
		if st.s.Flush == 0 {
			break
		}
		if !armed {
			pm.timer.Reset(st.s.Flush.D())
			armed = true
		}
		select {
		case it := <-st.q.full:
			pm.add(it)
			continue
		case <-pm.timer.C:
			armed = false
		case <-st.stop:
		case <-p.failed:
		}
		break
	}
	if armed {
		pm.timer.Stop()
	}
	return pm.send(p)
}

func (pm *pump) full() bool {
	return len(pm.held) >= pm.st.s.Batch || pm.bytes >= maxBatchBytes
}

// add puts an item in the message being built.
func (pm *pump) add(it *item) {
	if b := it.bite; b != nil {
		pm.held = append(pm.held, it)
		pm.bytes += len(b.Data)
		pm.msg.Bites = append(pm.msg.Bites, &protocol.Bite{
			Conversation: b.Conversation, User: b.UserID, Client: b.ClientID, Track: b.TrackID,
			Seq: b.Seq, Start: b.Start.UnixNano(), Duration: int64(b.Duration),
			Format: b.Format, Data: b.Data,
		})
		return
	}
	if !pm.announced[it.stream] {
		info := pm.st.streams.lookup(it.stream)
		if info == nil {
			// Its stream was forgotten while no plugin ran: stale.
			pm.st.stats.dropped.Add(1)
			pm.st.q.release(it)
			return
		}
		pm.msg.Opened = append(pm.msg.Opened, info)
		pm.announced[it.stream] = true
	}
	pm.held = append(pm.held, it)
	pm.bytes += len(it.buf)
	m := pm.pkts[len(pm.msg.Packets)]
	m.Stream, m.Arrival, m.Rtp = it.stream, it.arrival, it.buf
	m.Level, m.HasLevel, m.Voice = uint32(it.level), it.hasLevel, it.voice
	pm.msg.Packets = append(pm.msg.Packets, m)
}

// send sends the message built, if any, and releases its items.
func (pm *pump) send(p *process) error {
	st := pm.st
	if len(pm.held) == 0 && len(pm.msg.Closed) == 0 {
		return nil
	}
	dropped := st.stats.dropped.Load()
	pm.msg.Dropped = dropped - pm.dropped
	pm.dropped = dropped
	st.sendingSince.Store(time.Now().UnixNano())
	err := p.stream.Send(&pm.msg)
	st.sendingSince.Store(0)
	if err != nil {
		st.stats.dropped.Add(uint64(len(pm.held)))
		pm.reset()
		return fmt.Errorf("send: %w", err)
	}
	st.stats.sent.Add(uint64(len(pm.held)))
	st.stats.batches.Add(1)
	pm.reset()
	return nil
}

// reset releases the held items and empties the message.
func (pm *pump) reset() {
	for _, it := range pm.held {
		pm.st.q.release(it)
	}
	clear(pm.held)
	pm.held = pm.held[:0]
	for _, m := range pm.msg.Packets {
		m.Rtp = nil
	}
	clear(pm.msg.Bites)
	clear(pm.msg.Opened)
	pm.msg.Packets = pm.msg.Packets[:0]
	pm.msg.Bites = pm.msg.Bites[:0]
	pm.msg.Opened = pm.msg.Opened[:0]
	pm.msg.Closed = pm.msg.Closed[:0]
	pm.msg.Dropped = 0
	pm.bytes = 0
}

// sendClosed tells the plugin of the streams closed so far, after sending
// every item queued before they closed.
func (pm *pump) sendClosed(p *process) error {
	st := pm.st
	pm.closed = st.streams.takeClosed(pm.closed[:0])
	if len(pm.closed) == 0 {
		return nil
	}
	// Each processor queued its stream's last packet before closing it,
	// so those packets are among the items queued now.
	for n := len(st.q.full); n > 0; n-- {
		pm.add(<-st.q.full)
		if pm.full() {
			if err := pm.send(p); err != nil {
				return err
			}
		}
	}
	for _, id := range pm.closed {
		if pm.announced[id] {
			pm.msg.Closed = append(pm.msg.Closed, id)
			delete(pm.announced, id)
		}
	}
	st.streams.forget(pm.closed)
	return pm.send(p)
}

// finish sends what is queued, half-closes the stream and lets the plugin
// finish, up to stop_timeout, then shuts the process down.
func (pm *pump) finish(p *process) error {
	st := pm.st
	err := pm.drainTo(p)
	if err == nil {
		err = pm.sendClosed(p)
	}
	if err == nil {
		// Streams still open (tracks not closed) end here too.
		pm.closed = pm.closed[:0]
		for id := range pm.announced {
			pm.msg.Closed = append(pm.msg.Closed, id)
		}
		err = pm.send(p)
	}
	graceful := false
	if err == nil {
		if err = p.stream.CloseSend(); err == nil {
			t := time.NewTimer(st.s.StopTimeout.D())
			select {
			case <-p.recvDone:
				graceful = p.eof
			case <-t.C:
				st.log.Warn("plugin did not finish within stop_timeout: killing it", "stop_timeout", st.s.StopTimeout.D())
			}
			t.Stop()
		}
	}
	if err != nil && !errors.Is(err, errStopped) {
		st.log.Warn("plugin stopped uncleanly", "err", err)
	}
	p.shutdown(graceful)
	return nil
}

// drainTo sends every queued item.
func (pm *pump) drainTo(p *process) error {
	for n := len(pm.st.q.full); n > 0; n-- {
		pm.add(<-pm.st.q.full)
		if pm.full() {
			if err := pm.send(p); err != nil {
				return err
			}
		}
	}
	return pm.send(p)
}

// idle discards what is queued while no plugin runs, and forgets closed
// streams, until wake fires (true) or the stage stops (false). A nil wake
// waits for the stop.
func (pm *pump) idle(wake <-chan time.Time) bool {
	st := pm.st
	st.pid.Store(0)
	for {
		select {
		case it := <-st.q.full:
			st.stats.dropped.Add(1)
			st.q.release(it)
		case <-st.streams.notify:
			pm.closed = st.streams.takeClosed(pm.closed[:0])
			st.streams.forget(pm.closed)
		case <-wake:
			return true
		case <-st.stop:
			return false
		}
	}
}
