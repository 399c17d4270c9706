package cluster

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/rtc"
)

// BenchmarkRelaySend is the publisher's side on the track's goroutine: the
// relay's check of interest, the frame's encoding into a free frame and
// its queueing for a sender goroutine, which publishes it on a real NATS
// connection (its allocations count too: -benchmem measures the process).
func BenchmarkRelaySend(b *testing.B) {
	ns := testutil.StartNATS(b, testutil.JetStream)
	a := newRouter(b, ns.URL())
	if err := a.rooms.Join("alice", "c-1"); err != nil {
		b.Fatal(err)
	}
	a.node.interest.set("other", 0, true, []string{"c-1"}, time.Now(), time.Hour)
	tr := openRelay(b, a, "alice")
	pkt := rtpPacket(1)
	now := time.Now()
	b.ReportAllocs()
	s := relayBursts(b, a.node, tr, pkt, now)
	// NATS messages per packet: the frames of a burst that queued while
	// the sender published share batches.
	b.ReportMetric(float64(s.NATSOut)/float64(b.N), "msgs/op")
	tr.Close()
}

// relayBursts writes b.N packets (pkt, its sequence number counting) to
// tr, a relay of n, paced as a busy router is: a burst of 64 packets, then
// the senders catch up, so that the figure is the cost of relaying, not
// of drops. It reports the drops per packet and returns n's counts.
func relayBursts(b *testing.B, n *Node, tr rtc.TrackSink, pkt []byte, now time.Time) Stats {
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint16(pkt[2:4], uint16(i))
		if err := tr.WriteRTP(pkt, now); err != nil {
			b.Fatal(err)
		}
		if i%64 == 63 {
			waitIdle(n)
		}
	}
	waitIdle(n)
	b.StopTimer()
	s := n.Stats()
	b.ReportMetric(float64(s.DropQueue)/float64(b.N), "drops/op")
	return s
}

// waitIdle waits until every frame of n is back in its free list.
func waitIdle(n *Node) {
	for _, s := range n.shards {
		for len(s.free) != cap(s.free) {
			runtime.Gosched()
		}
	}
}

// BenchmarkRelayReceive is the receiving side past NATS: a frame's parsing,
// the remote track's lookup, its packet cache and its relayed pipeline
// chain (gate and forwarder; no slot listens, so no fan-out).
func BenchmarkRelayReceive(b *testing.B) {
	_, r := bobsRouter(b)
	s := r.relaySub("c-1")
	frame := appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, time.Now().UnixNano(), &publisher{user: "alice", client: "alice-phone"}, rtpPacket(1))
	raw := frame[len(frame)-len(rtpPacket(1)):]
	now := time.Now()
	s.handle(frame, now)
	if r.node.Stats().RemoteTracks != 1 {
		b.Fatal("no remote track")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint16(raw[2:4], uint16(i+2))
		s.handle(frame, now)
	}
}

// BenchmarkRelayReceiveNATS is the receiving side with nats.go's delivery:
// frames published on one connection, handled by a relay subscription of
// another. nats.go allocates its Msg per message: that is its cost, not
// the relay's (BenchmarkRelayReceive).
func BenchmarkRelayReceiveNATS(b *testing.B) {
	ns, r := bobsRouter(b)
	done := r.receiveBench(b, uint64(b.N))
	pub := connect(b, ns.URL())
	frame := appendFrame(nil, kindPacket, codecOpus, 1, 99, 7, time.Now().UnixNano(), &publisher{user: "alice", client: "alice-phone"}, rtpPacket(1))
	raw := frame[len(frame)-len(rtpPacket(1)):]
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint16(raw[2:4], uint16(i))
		if err := pub.Publish("bench.relay", frame); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

// receiveBench subscribes r's relay subscription of conversation c-1 to
// subject bench.relay, and returns a channel closed once want frames came
// in.
func (r *router) receiveBench(b *testing.B, want uint64) <-chan struct{} {
	s := r.relaySub("c-1")
	done := make(chan struct{})
	sub, err := r.nc.Subscribe("bench.relay", func(m *nats.Msg) {
		s.onMsg(m)
		if r.node.count.in.Load() == want {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	_ = sub.SetPendingLimits(-1, -1)
	if err := r.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	return done
}

// BenchmarkRelayReceiveNATSBatch10 is BenchmarkRelayReceiveNATS with the
// frames in batches of 10 (what a sender makes of frames queued
// together): per packet, nats.go's delivery and its allocations are paid
// once per 10. allocs/pkt is allocs/op unrounded (the process's, the test
// NATS server's included, as with -benchmem).
func BenchmarkRelayReceiveNATSBatch10(b *testing.B) {
	const per = 10
	ns, r := bobsRouter(b)
	batches := (b.N + per - 1) / per
	want := uint64(batches * per)
	done := r.receiveBench(b, want)
	pub := connect(b, ns.URL())
	alice := &publisher{user: "alice", client: "alice-phone"}
	pkt := rtpPacket(1)
	var batch, frame []byte
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range batches {
		batch = startBatch(batch)
		for j := range per {
			binary.BigEndian.PutUint16(pkt[2:4], uint16(i*per+j))
			frame = appendFrame(frame[:0], kindPacket, codecOpus, 1, 99, 7, 1, alice, pkt)
			batch = appendBatched(batch, frame)
		}
		if err := pub.Publish("bench.relay", batch); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/float64(want), "allocs/pkt")
	b.ReportMetric(float64(r.node.Stats().NATSIn)/float64(want), "msgs/op")
}

// close0 ends the subscription's tracks when it has no NATS subscription.
func (s *relaySub) close0() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, rt := range s.tracks {
		delete(s.tracks, k)
		s.end(rt)
	}
}
