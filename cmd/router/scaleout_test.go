package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// routerProcess is a router binary running as a process of the test, its
// log captured (child).
type routerProcess struct {
	*child
	t    *testing.T
	name string
	addr string
}

// startRouterProcess runs the router binary bin with the test defaults
// over env, waits until it listens, and stops it (SIGTERM, then a wait for
// a clean exit) at the end of the test; if the test failed, its warnings,
// errors and cluster lines are logged then.
func startRouterProcess(t *testing.T, bin, name string, env map[string]string) *routerProcess {
	t.Helper()
	addr := testutil.FreeAddr(t)
	vars := map[string]string{
		"LISTEN":                   addr,
		"ICE_IPS":                  "127.0.0.1",
		"PERMISSIONS_HOST":         "allow-all",
		"CONNECT_TIMEOUT":          "10s",
		"ICE_DISCONNECTED_TIMEOUT": "1s",
		"ICE_FAILED_TIMEOUT":       "1s",
		"ICE_KEEPALIVE":            "250ms",
	}
	for k, v := range env {
		vars[k] = v
	}
	c := runChild(t, []string{bin}, vars)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, l := range strings.Split(c.log(), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "cluster:") {
				t.Logf("%s: %s", name, l)
			}
		}
	})
	c.waitLine(0, 20*time.Second, "router listening")
	return &routerProcess{child: c, t: t, name: name, addr: addr}
}

// join POSTs /join/conv for the user's phone and fails the test unless
// it is admitted.
func (r *routerProcess) join(user, conv string) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+r.addr+"/join/"+conv, nil)
	b, _ := json.Marshal(claim.Claim{UserID: user, ClientID: user + "-phone"})
	req.Header.Set(claim.Header, string(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		r.t.Fatalf("%s: join %s %s: %d", r.name, user, conv, resp.StatusCode)
	}
}

// dial connects a client of user's device client.
func (r *routerProcess) dial(user, client string, o beepclient.Options) *beepclient.Client {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	o.URL = "ws://" + r.addr + "/connect"
	o.Claim = claim.Claim{UserID: user, ClientID: client}
	c, err := beepclient.Dial(ctx, o)
	if err != nil {
		r.t.Fatalf("%s: dial %s: %v", r.name, user, err)
	}
	r.t.Cleanup(c.Close)
	return c
}

// metric returns the sum of the samples of the router's /metrics whose
// name is name and whose labels contain every one of labels.
func (r *routerProcess) metric(name string, labels ...string) float64 {
	r.t.Helper()
	resp, err := http.Get("http://" + r.addr + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name) || (len(l) > len(name) && l[len(name)] != '{' && l[len(name)] != ' ') {
			continue
		}
		ok := true
		for _, lb := range labels {
			ok = ok && strings.Contains(l, lb)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			r.t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

// TestClusterTwoRouterProcesses runs two router processes on one NATS
// server (JetStream on) started by the test. Alice is on router A, Bob on
// router B, in one conversation; Carol (B) and Dan (A) in another; Alice
// also has a tablet on B. Each hears the others of its conversation across
// the routers, as continuous streams, never itself (Alice's tablet never
// hears Alice's phone, relayed from A), nothing of the other conversation;
// every bite is published exactly once, by the publisher's router; and
// the relay of a conversation stops once its last listener on the other
// router left.
func TestClusterTwoRouterProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two router processes")
	}
	bin := buildRouter(t)
	ns := testutil.StartNATS(t, testutil.JetStream)
	env := map[string]string{"NATS": ns.URL(), "CLUSTER_HEARTBEAT": "100ms"}
	a := startRouterProcess(t, bin, "router A", env)
	b := startRouterProcess(t, bin, "router B", env)

	bites := watchBites(t, ns.URL())

	// Joins on either router admit everywhere: Alice joins on B and
	// connects on A, Dan the other way round.
	b.join("alice", "conv-1")
	a.join("bob", "conv-1")
	b.join("carol", "conv-2")
	b.join("dan", "conv-2")
	clients := map[byte]*beepclient.Client{
		'a': a.dial("alice", "alice-phone", beepclient.Options{Publish: true, Receive: 2}),
		'b': b.dial("bob", "bob-phone", beepclient.Options{Publish: true, Receive: 2}),
		'c': b.dial("carol", "carol-phone", beepclient.Options{Publish: true, Receive: 2}),
	}
	dan := a.dial("dan", "dan-phone", beepclient.Options{Receive: 2})
	tablet := b.dial("alice", "alice-tablet", beepclient.Options{Receive: 2})

	// Each router listens in both conversations: each relays both out and
	// subscribes to both.
	for _, r := range []*routerProcess{a, b} {
		testutil.Eventually(t, 10*time.Second, r.name+" relaying both conversations", func() bool {
			return r.metric("router_relay_subjects", `direction="out"`) == 2 && r.metric("router_relay_subjects", `direction="in"`) == 2
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

	want := map[*beepclient.Client]struct {
		name   string
		hears  []byte
		self   byte
		across []byte
	}{
		clients['a']: {"alice (A)", []byte{'b'}, 'a', []byte{'c'}},
		clients['b']: {"bob (B)", []byte{'a'}, 'b', []byte{'c'}},
		clients['c']: {"carol (B)", nil, 'c', []byte{'a', 'b'}},
		dan:          {"dan (A)", []byte{'c'}, 'd', []byte{'a', 'b'}},
		tablet:       {"alice's tablet (B)", []byte{'b'}, 'a', []byte{'c'}},
	}
	for c, w := range want {
		err := c.WaitFor(deadline(t, 10*time.Second), func(rx map[string][]beepclient.Packet) bool {
			count, _ := heard(rx)
			for _, id := range w.hears {
				if count[id] < 120 {
					return false
				}
			}
			return true
		})
		rx := c.Received()
		count, mids := heard(rx)
		if err != nil {
			t.Fatalf("%s heard %v, want at least 120 packets of each of %q", w.name, count, w.hears)
		}
		if count[w.self] != 0 {
			t.Errorf("%s heard its own user %d times", w.name, count[w.self])
		}
		for _, id := range w.across {
			if count[id] != 0 {
				t.Errorf("%s heard %c of another conversation %d times", w.name, id, count[id])
			}
		}
		for id, m := range mids {
			if len(m) != 1 {
				t.Errorf("%s: speaker %c spread over mids %v", w.name, id, m)
			}
		}
		for mid, pkts := range rx {
			checkStream(t, mid, pkts)
		}
		t.Logf("%s heard %v", w.name, count)
	}

	// Bites: two per publisher, each published once, by the publisher's
	// router only (the relayed tracks make none).
	bites.checkOnce(6, a, b)
	if ba := a.metric("router_stage_events_total", `event="bites"`, `stage="bite-chunker"`); ba != 2 {
		t.Errorf("router A made %v bites, want 2 (Alice's)", ba)
	}
	if bb := b.metric("router_stage_events_total", `event="bites"`, `stage="bite-chunker"`); bb != 4 {
		t.Errorf("router B made %v bites, want 4 (Bob's and Carol's)", bb)
	}
	if in := b.metric("router_relay_packets_total", `direction="in"`); in < 120 {
		t.Errorf("router B received %v relayed packets, want at least Alice's 120", in)
	}
	for _, r := range []*routerProcess{a, b} {
		q := r.quantiles("router_relay_hop_seconds", 0.5, 0.99)
		t.Logf("%s: relayed hop (arrival at the publisher's router → arrival here) p50 ≤ %v, p99 ≤ %v", r.name, q[0], q[1])
	}

	// The relay stops when B has no listener in conv-1 left: the tablet
	// closes (gone after the ICE timeouts), then Bob moves to conv-2.
	tablet.Close()
	testutil.Eventually(t, 10*time.Second, "router B forgetting Alice's tablet", func() bool {
		return b.metric("router_peers") == 2
	})
	b.join("bob", "conv-2")
	moved := time.Now()
	testutil.Eventually(t, 2*time.Second, "router A to stop relaying conv-1", func() bool {
		return a.metric("router_relay_subjects", `direction="out"`) == 1
	})
	t.Logf("relay stopped %v after the last remote listener left", time.Since(moved).Round(time.Millisecond))
	if err := pace(clients['a'], 'a', 200, 5, loud); err != nil {
		t.Fatal(err)
	}
	out := a.metric("router_relay_packets_total", `direction="out"`)
	if err := pace(clients['a'], 'a', 205, 25, loud); err != nil {
		t.Fatal(err)
	}
	if after := a.metric("router_relay_packets_total", `direction="out"`); after != out {
		t.Errorf("router A relayed %v packets after nobody on B listened in conv-1", after-out)
	}
}

// biteLog counts the bites published on a NATS server, by user and
// sequence number.
type biteLog struct {
	t  *testing.T
	mu sync.Mutex
	n  map[biteKey]int
}

type biteKey struct {
	user string
	seq  uint64
}

// watchBites subscribes to the bites published on the NATS server at url
// until the end of the test.
func watchBites(t *testing.T, url string) *biteLog {
	t.Helper()
	l := &biteLog{t: t, n: map[biteKey]int{}}
	nc := testutil.ConnectNATS(t, url)
	if _, err := nc.Subscribe("bite", func(m *nats.Msg) {
		var bt beeppb.Bite
		if err := proto.Unmarshal(m.Data, &bt); err != nil {
			t.Errorf("bad bite: %v", err)
			return
		}
		l.mu.Lock()
		l.n[biteKey{bt.User, bt.Seq}]++
		l.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// checkOnce waits for want distinct bites, two of each publisher (seqs 0
// and 1), and for every bite the routers' nats-sink stages published, and
// fails the test unless each was received exactly once.
func (l *biteLog) checkOnce(want int, routers ...*routerProcess) {
	l.t.Helper()
	testutil.Eventually(l.t, 10*time.Second, "two bites of each publisher", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.n) == want
	})
	published := func() (n float64) {
		for _, r := range routers {
			n += r.metric("router_stage_events_total", `event="published"`, `stage="nats-sink"`)
		}
		return n
	}
	testutil.Eventually(l.t, 5*time.Second, "every published bite received", func() bool {
		l.mu.Lock()
		n := 0
		for _, c := range l.n {
			n += c
		}
		l.mu.Unlock()
		return float64(n) == published()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, n := range l.n {
		if n != 1 {
			l.t.Errorf("bite %d of %s published %d times", k.seq, k.user, n)
		}
		if k.seq > 1 {
			l.t.Errorf("bite %d of %s: want seqs 0 and 1", k.seq, k.user)
		}
	}
}

// quantiles returns upper bounds of quantiles qs of histogram name, from
// its buckets on /metrics.
func (r *routerProcess) quantiles(name string, qs ...float64) (out []time.Duration) {
	r.t.Helper()
	resp, err := http.Get("http://" + r.addr + "/metrics")
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	type bucket struct{ le, n float64 }
	var bs []bucket
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		rest, ok := strings.CutPrefix(l, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le, val, _ := strings.Cut(rest, `"} `)
		n, err := strconv.ParseFloat(val, 64)
		if err != nil {
			r.t.Fatalf("bucket line %q", l)
		}
		f, err := strconv.ParseFloat(le, 64)
		if err != nil {
			f = 1e9 // +Inf
		}
		bs = append(bs, bucket{f, n})
	}
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		r.t.Fatalf("%s: no %s samples", r.name, name)
	}
	total := bs[len(bs)-1].n
	for _, q := range qs {
		for _, b := range bs {
			if b.n >= q*total {
				out = append(out, time.Duration(b.le*float64(time.Second)).Round(time.Microsecond))
				break
			}
		}
	}
	return out
}

// TestClusterOnOneRouter: CLUSTER=on with embedded NATS (one router, its
// own JetStream) behaves as without: two users hear each other, nothing is
// relayed, and the memberships are in the shared bucket's cache.
func TestClusterOnOneRouter(t *testing.T) {
	r := startRouter(t, map[string]string{"CLUSTER": "on"})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	clients := map[byte]*beepclient.Client{
		'a': r.dial("alice", beepclient.Options{Publish: true, Receive: 1}),
		'b': r.dial("bob", beepclient.Options{Publish: true, Receive: 1}),
	}
	paceAll(t, 50, loud, clients)
	for id, c := range clients {
		err := c.WaitFor(deadline(t, 10*time.Second), func(rx map[string][]beepclient.Packet) bool {
			count, _ := heard(rx)
			return minOthers(count, id) >= 40
		})
		if count, _ := heard(c.Received()); err != nil || count[id] != 0 {
			t.Fatalf("client %c heard %v: %v", id, count, err)
		}
	}
	s := r.a.cluster.Stats()
	if s.RelayedOut != 0 || s.RelayedIn != 0 || s.RemoteTracks != 0 || s.Routers != 0 {
		t.Errorf("one router relayed: %+v", s)
	}
	if s.Memberships != 2 {
		t.Errorf("membership cache holds %d, want 2", s.Memberships)
	}
}
