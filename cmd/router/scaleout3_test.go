package main

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/pion/rtp"

	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// natsCluster3 is three router processes (A, B, C), each connected to its
// own node of a 3-node NATS cluster with JetStream, started by the test.
type natsCluster3 struct {
	t       *testing.T
	bin     string
	nodes   []*testutil.NATS
	routers []*routerProcess
}

// startNATSCluster3 starts the NATS cluster and the three routers, and
// waits until each router's membership bucket (3 replicas) is open.
func startNATSCluster3(t *testing.T) *natsCluster3 {
	t.Helper()
	c := &natsCluster3{t: t, bin: buildRouter(t), nodes: testutil.StartNATSCluster(t, 3)}
	for i := range 3 {
		c.routers = append(c.routers, c.start(i))
	}
	return c
}

// start starts router i (A, B or C) on NATS node i, and waits until its
// membership bucket is open.
func (c *natsCluster3) start(i int) *routerProcess {
	c.t.Helper()
	r := startRouterProcess(c.t, c.bin, "router "+string(rune('A'+i)), map[string]string{
		// One URL: the client learns the other nodes from the cluster and
		// reconnects to one of them when its own goes away.
		"NATS":                c.nodes[i].URL(),
		"MEMBERSHIP_REPLICAS": "3",
		"LOG_LEVEL":           "debug", // the cluster's debug lines are logged if the test fails
	})
	r.waitLine(0, 30*time.Second, "cluster: membership bucket open")
	return r
}

// memberships reads the shared membership bucket through NATS node i:
// the conversation of each user.
func (c *natsCluster3) memberships(i int) map[string]string {
	c.t.Helper()
	nc := testutil.ConnectNATS(c.t, c.nodes[i].URL())
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "beep-memberships")
	if err != nil {
		c.t.Fatalf("membership bucket: %v", err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			c.t.Fatalf("membership %s: %v", k, err)
		}
		var v struct {
			Conv string `json:"c"`
		}
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			c.t.Fatalf("membership %s: %v", k, err)
		}
		out[k[len("m."):]] = v.Conv
	}
	return out
}

// TestClusterThreeRoutersThreeNATS runs three router processes, each on
// its own node of a 3-node NATS cluster (routes and JetStream on loopback,
// memberships in 3 replicas), with six users, two per router, in one
// conversation, each joined on another router than the one it connects
// to. Everyone hears everyone else as continuous streams, never itself;
// every bite is published exactly once, by the publisher's router. Then a
// user joins on A and connects on C: admitted, heard on every router; moved
// to another conversation through B, nothing more of it reaches the old
// conversation on any router, and the new one hears it.
func TestClusterThreeRoutersThreeNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three router processes and a NATS cluster")
	}
	c := startNATSCluster3(t)
	a, b, cr := c.routers[0], c.routers[1], c.routers[2]
	bites := watchBites(t, c.nodes[1].URL())

	// Two users per router, each joined on the next router.
	users := []struct {
		id       byte
		name     string
		join, on *routerProcess
	}{
		{'a', "alice", b, a}, {'b', "bob", cr, a},
		{'c', "carol", cr, b}, {'d', "dan", a, b},
		{'e', "erin", a, cr}, {'f', "frank", b, cr},
	}
	for _, u := range users {
		u.join.join(u.name, "conv-1")
	}
	clients := map[byte]*beepclient.Client{}
	where := map[byte]string{}
	for _, u := range users {
		clients[u.id] = u.on.dial(u.name, u.name+"-phone", beepclient.Options{Publish: true, Receive: 5})
		where[u.id] = u.on.name
	}
	for _, r := range c.routers {
		testutil.Eventually(t, 15*time.Second, r.name+" relaying conv-1 to both others", func() bool {
			return r.metric("router_relay_remote_tracks") == 0 && r.metric("router_cluster_routers") == 2 &&
				r.metric("router_relay_subjects", `direction="out"`) == 1 && r.metric("router_relay_subjects", `direction="in"`) == 1
		})
	}

	// Two utterances each of 600 ms, split by 800 ms of silence.
	level := func(i int) int {
		if i%70 < 30 {
			return 10
		}
		return 120
	}
	paceAll(t, 140, level, clients)
	for id, cl := range clients {
		err := cl.WaitFor(deadline(t, 15*time.Second), func(rx map[string][]beepclient.Packet) bool {
			count, _ := heard(rx)
			return len(count) >= 5 && minOthers(count, id) >= 120
		})
		rx := cl.Received()
		count, mids := heard(rx)
		if err != nil {
			t.Fatalf("%c (%s) heard %v, want at least 120 packets of each of the 5 others", id, where[id], count)
		}
		if count[id] != 0 {
			t.Errorf("%c (%s) heard itself %d times", id, where[id], count[id])
		}
		for other, m := range mids {
			if len(m) != 1 {
				t.Errorf("%c: speaker %c spread over mids %v", id, other, m)
			}
		}
		for mid, pkts := range rx {
			checkStream(t, mid, pkts)
		}
		t.Logf("%c (%s) heard %v", id, where[id], count)
	}
	bites.checkOnce(12, a, b, cr)
	for _, r := range c.routers {
		if n := r.metric("router_stage_events_total", `event="bites"`, `stage="bite-chunker"`); n != 4 {
			t.Errorf("%s made %v bites, want 4 (its two publishers')", r.name, n)
		}
		if in := r.metric("router_relay_packets_total", `direction="in"`); in < 4*120 {
			t.Errorf("%s received %v relayed packets, want at least 4×120", r.name, in)
		}
		q := r.quantiles("router_relay_hop_seconds", 0.5, 0.99)
		t.Logf("%s: relayed hop p50 ≤ %v, p99 ≤ %v", r.name, q[0], q[1])
	}

	// Gus joins on A and connects on C, which never saw his join: admitted
	// into conv-1, heard on every router. Hank listens in conv-2 on A.
	a.join("gus", "conv-1")
	gus := cr.dial("gus", "gus-phone", beepclient.Options{Publish: true, Receive: 1})
	b.join("hank", "conv-2")
	hank := a.dial("hank", "hank-phone", beepclient.Options{Receive: 1})
	talking := startTalking(gus, 'g', 0)
	defer talking.stop()
	for id, cl := range clients {
		if err := cl.WaitFor(deadline(t, 15*time.Second), func(rx map[string][]beepclient.Packet) bool {
			count, _ := heard(rx)
			return count['g'] >= 25
		}); err != nil {
			t.Fatalf("%c (%s) never heard gus (joined on A, connected on C)", id, where[id])
		}
	}

	// Gus moves to conv-2 through B.
	b.join("gus", "conv-2")
	moved := time.Now()
	if err := hank.WaitFor(deadline(t, 15*time.Second), func(rx map[string][]beepclient.Packet) bool {
		count, _ := heard(rx)
		return count['g'] >= 25
	}); err != nil {
		t.Fatal("hank (conv-2, router A) never heard gus after his move through B")
	}
	// Whatever of gus conv-1 heard, it heard before the move reached C;
	// from here on it hears nothing more of him.
	lastOld := func() (last time.Time, n int) {
		for _, cl := range clients {
			for _, pkts := range cl.Received() {
				for _, p := range pkts {
					if speaker(p) == 'g' {
						n++
						if p.At.After(last) {
							last = p.At
						}
					}
				}
			}
		}
		return last, n
	}
	last, n := lastOld()
	t.Logf("the last packet of gus in conv-1 arrived %v after his move through B returned", last.Sub(moved).Round(time.Millisecond))
	if d := last.Sub(moved); d > 2*time.Second {
		t.Errorf("conv-1 heard gus %v after his move", d)
	}
	sent := talking.sent()
	if err := hank.WaitFor(deadline(t, 15*time.Second), func(rx map[string][]beepclient.Packet) bool {
		for _, pkts := range rx {
			for _, p := range pkts {
				if speaker(p) == 'g' && counter(p) >= sent+50 {
					return true
				}
			}
		}
		return false
	}); err != nil {
		t.Fatal("hank stopped hearing gus")
	}
	if _, after := lastOld(); after != n {
		t.Errorf("conv-1 heard %d more packets of gus after he moved to conv-2", after-n)
	}
	count, _ := heard(hank.Received())
	for id := range clients {
		if count[id] != 0 {
			t.Errorf("hank (conv-2) heard %c of conv-1 %d times", id, count[id])
		}
	}
}

// loudTalker publishes 20 ms packets (loud, speaker id and a counter) from one
// client until stopped.
type loudTalker struct {
	n    sync.Mutex
	next int
	quit chan struct{}
	done chan struct{}
}

// startTalking starts a loudTalker for c as speaker id, its counter from from.
func startTalking(c *beepclient.Client, id byte, from int) *loudTalker {
	tk := &loudTalker{next: from, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tk.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tk.quit:
				return
			case <-tick.C:
			}
			tk.n.Lock()
			i := tk.next
			tk.next++
			tk.n.Unlock()
			_ = c.Send(frame(id, i), 10) // a dead router's client just fails
		}
	}()
	return tk
}

// sent returns the counter of the next packet.
func (tk *loudTalker) sent() int {
	tk.n.Lock()
	defer tk.n.Unlock()
	return tk.next
}

// stop stops the loudTalker; it may be called more than once.
func (tk *loudTalker) stop() {
	select {
	case <-tk.quit:
	default:
		close(tk.quit)
	}
	<-tk.done
}

// listener is a receiving client that keeps only when each speaker's
// packets arrived, by the kernel's receive time of the datagram where it
// is known (else the read time): enough to measure gaps over a long call,
// without the stalls of the test process itself (which also runs the
// NATS servers).
type listener struct {
	c  *beepclient.Client
	mu sync.Mutex
	at map[byte][]time.Time
}

// dialListener dials user's device on r as a listener that also publishes.
func dialListener(r *routerProcess, user, client string, slots int) *listener {
	l := &listener{at: map[byte][]time.Time{}}
	l.c = r.dial(user, client, beepclient.Options{Publish: true, Receive: slots, ArrivalTimes: true,
		OnTrack: func(string) func(*rtp.Packet, time.Time, time.Time) {
			return func(p *rtp.Packet, at, arrived time.Time) {
				if len(p.Payload) < 6 {
					return
				}
				if !arrived.IsZero() {
					at = arrived
				}
				l.mu.Lock()
				l.at[p.Payload[3]] = append(l.at[p.Payload[3]], at)
				l.mu.Unlock()
			}
		}})
	return l
}

// heardSince returns how many packets of speaker id arrived after t0.
func (l *listener) heardSince(id byte, t0 time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, at := range l.at[id] {
		if at.After(t0) {
			n++
		}
	}
	return n
}

// maxGap returns the longest time between two packets of speaker id that
// arrived between from and to (including the time from from to the first
// and from the last to to), and the number of packets then.
func (l *listener) maxGap(id byte, from, to time.Time) (gap time.Duration, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := from
	for _, at := range l.at[id] {
		if at.Before(from) || at.After(to) {
			continue
		}
		n++
		gap = max(gap, at.Sub(prev))
		prev = at
	}
	return max(gap, to.Sub(prev)), n
}

// party is the six users of the failure test, two per router, each a
// listener that talks all along.
type party struct {
	t         *testing.T
	listeners map[byte]*listener
	talkers   map[byte]*loudTalker
	where     map[byte]int // router index
}

// connect dials user id (name) on router i as a talking listener.
func (p *party) connect(c *natsCluster3, i int, id byte, name string, from int) {
	p.t.Helper()
	l := dialListener(c.routers[i], name, name+"-phone", 5)
	p.listeners[id], p.where[id] = l, i
	p.talkers[id] = startTalking(l.c, id, from)
	p.t.Cleanup(p.talkers[id].stop)
}

// waitHear waits until each of the listeners in ids heard at least n
// packets of each of the speakers in ids but itself since t0.
func (p *party) waitHear(ids string, n int, t0 time.Time, what string) {
	p.t.Helper()
	testutil.Eventually(p.t, 20*time.Second, what, func() bool {
		for _, l := range []byte(ids) {
			for _, s := range []byte(ids) {
				if s != l && p.listeners[l].heardSince(s, t0) < n {
					return false
				}
			}
		}
		return true
	})
}

// gaps returns the longest gap in the audio of each speaker of ids heard
// by each listener of ids between from and to, the longest of all and
// the pair it was on, failing the test if a pair heard nothing.
func (p *party) gaps(ids string, from, to time.Time) (worst time.Duration, pair string) {
	p.t.Helper()
	for _, l := range []byte(ids) {
		for _, s := range []byte(ids) {
			if s == l {
				continue
			}
			g, n := p.listeners[l].maxGap(s, from, to)
			if n == 0 {
				p.t.Errorf("%c heard nothing of %c", l, s)
			}
			if g > worst {
				worst, pair = g, string([]byte{s, '>', l})
			}
		}
	}
	return worst, pair
}

// TestClusterFailureIsolation runs three router processes, each on its own
// node of a 3-node NATS cluster, with six users (two per router) talking
// all along in one conversation. Router C is killed (SIGKILL) mid-call:
// the calls on A and B go on without a gap, C's publishers leave the
// speaker slots on A and B within 3 s, C's memberships stay in the bucket;
// restarted, C takes its users back (they connect without joining again)
// and they hear and are heard. Then A's NATS node stops: the calls go on
// after the router's reconnect to another node, no membership is lost, and
// a join made after the loss still reaches another router.
func TestClusterFailureIsolation(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three router processes and a NATS cluster")
	}
	c := startNATSCluster3(t)
	a, b := c.routers[0], c.routers[1]
	p := &party{t: t, listeners: map[byte]*listener{}, talkers: map[byte]*loudTalker{}, where: map[byte]int{}}
	names := map[byte]string{'a': "alice", 'b': "bob", 'c': "carol", 'd': "dan", 'e': "erin", 'f': "frank"}
	for i, ids := range []string{"ab", "cd", "ef"} {
		for _, id := range []byte(ids) {
			c.routers[i].join(names[id], "conv-1")
		}
	}
	t0 := time.Now()
	for i, ids := range []string{"ab", "cd", "ef"} {
		for _, id := range []byte(ids) {
			p.connect(c, i, id, names[id], 0)
		}
	}
	p.waitHear("abcdef", 50, t0, "everyone hearing the five others")

	// SIGKILL router C mid-call.
	for _, r := range []*routerProcess{a, b} {
		testutil.Eventually(t, 10*time.Second, r.name+" has the 4 remote tracks", func() bool {
			return r.metric("router_relay_remote_tracks") == 4
		})
	}
	steady := time.Now()
	p.waitHear("abcd", 100, steady, "two seconds of the call before the kill")
	killed := time.Now()
	c.routers[2].kill()
	gone := map[string]time.Duration{}
	testutil.Eventually(t, 10*time.Second, "C's publishers out of A's and B's conversations", func() bool {
		for _, r := range []*routerProcess{a, b} {
			if _, ok := gone[r.name]; !ok && r.metric("router_relay_remote_tracks") == 2 {
				gone[r.name] = time.Since(killed)
			}
		}
		return len(gone) == 2
	})
	p.waitHear("abcd", 100, killed, "two seconds of the call after the kill")
	base, basePair := p.gaps("abcd", steady, killed)
	gap, pair := p.gaps("abcd", killed, time.Now())
	t.Logf("SIGKILL of C: longest gap on A and B %v (%s; %v in the two seconds before the kill, %s); C's publishers left the slots of A after %v, of B after %v",
		gap.Round(time.Millisecond), pair, base.Round(time.Millisecond), basePair, gone[a.name].Round(time.Millisecond), gone[b.name].Round(time.Millisecond))
	// Generous, and beside what the busy machine does anyway: a stall of
	// the test process or of a router shows before the kill too.
	if gap > time.Second && gap > 2*base {
		t.Errorf("the calls on A and B had a gap of %v (%s) after C was killed (%v in the two seconds before)", gap, pair, base)
	}
	for name, d := range gone {
		if d > 5*time.Second {
			t.Errorf("C's publishers left %s's slots %v after the kill", name, d)
		}
	}
	mem := c.memberships(1)
	for _, name := range names {
		if mem[name] != "conv-1" {
			t.Errorf("after C's death the bucket has %s in %q, want conv-1 (all: %v)", name, mem[name], mem)
		}
	}

	// C restarts; its users connect again without joining.
	p.talkers['e'].stop()
	p.talkers['f'].stop()
	c.routers[2] = c.start(2)
	back := time.Now()
	p.connect(c, 2, 'e', "erin", 10000)
	p.connect(c, 2, 'f', "frank", 10000)
	p.waitHear("abcdef", 50, back, "everyone hearing the five others after C's restart")
	t.Logf("C restarted: its users heard and hear everyone %v after the restart", time.Since(back).Round(time.Millisecond))

	// NATS node 1 (A's) stops mid-call.
	steady = time.Now()
	p.waitHear("abcdef", 100, steady, "two seconds of the call before the NATS node loss")
	lost := time.Now()
	c.nodes[0].Stop()
	a.waitLine(0, 20*time.Second, "NATS reconnected")
	reconnected := time.Since(lost)
	p.waitHear("abcdef", 100, lost, "two seconds of the call after the NATS node loss")
	base, basePair = p.gaps("abcdef", steady, lost)
	gap, pair = p.gaps("abcdef", lost, time.Now())
	local, localPair := p.gaps("ab", lost, time.Now())
	t.Logf("NATS node loss: A reconnected after %v; longest gap %v (%s), on A's own calls %v (%s); %v in the two seconds before (%s)",
		reconnected.Round(time.Millisecond), gap.Round(time.Millisecond), pair, local.Round(time.Millisecond), localPair, base.Round(time.Millisecond), basePair)
	if gap > 5*time.Second && gap > 2*base {
		t.Errorf("a NATS node loss interrupted the calls for %v (%s; %v in the two seconds before)", gap, pair, base)
	}
	if local > time.Second && local > 2*base {
		t.Errorf("a NATS node loss interrupted A's own calls for %v (%s; %v in the two seconds before)", local, localPair, base)
	}
	mem = c.memberships(1)
	for _, name := range names {
		if mem[name] != "conv-1" {
			t.Errorf("after the NATS node loss the bucket has %s in %q, want conv-1 (all: %v)", name, mem[name], mem)
		}
	}
	// A join after the loss, on B, admits on A. Ivy has a slot for each of
	// the six speakers: she hears a (on A) and c (relayed from B).
	b.join("ivy", "conv-1")
	joined := time.Now()
	ivy := dialListener(a, "ivy", "ivy-phone", 6)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := testutil.Until(ctx, func() bool {
		return ivy.heardSince('a', joined) >= 25 && ivy.heardSince('c', joined) >= 25
	}); err != nil {
		t.Fatalf("ivy (joined on B after the loss, on A) heard a %d and c %d times in 20 s; A: memberships %v, watch lag %v, restarts %v, peers %v; bucket: %v",
			ivy.heardSince('a', joined), ivy.heardSince('c', joined), a.metric("router_membership_cache"), a.metric("router_membership_watch_lag"),
			a.metric("router_membership_watch_restarts_total"), a.metric("router_peers"), c.memberships(1))
	}
	t.Logf("ivy, joined on B after the loss, heard a and c on A %v after the join; A's membership watch restarted %v times",
		time.Since(joined).Round(time.Millisecond), a.metric("router_membership_watch_restarts_total"))
}
