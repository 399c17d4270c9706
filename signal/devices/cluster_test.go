package devices

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/beepvoice/router/claim"

	"github.com/beepvoice/router/internal/testutil"
)

const testBeat = 50 * time.Millisecond

// TestClusterDelivery: two instances on one NATS deliver both ways, list
// the union of their devices, and a newer subscription on one replaces an
// older one on the other.
func TestClusterDelivery(t *testing.T) {
	leakCheck(t)
	natsURL := startNATS(t)
	a := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "a", Heartbeat: testBeat})
	b := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "b", Heartbeat: testBeat})

	alice := a.subscribe(t, "alice", "phone")
	bob := b.subscribe(t, "bob", "laptop")

	// A → B and B → A.
	if code := a.post(t, alicePhone, "bob", "laptop", postBodyJSON("from a", "offer")); code != http.StatusOK {
		t.Fatalf("post on a to b's device: %d", code)
	}
	if ev := bob.nextEvent(t); ev.id != "alice:phone" || ev.event != "offer" || !sameList(ev.data, "from a") {
		t.Fatalf("b got %+v", ev)
	}
	bobLaptop := claim.Claim{UserID: "bob", ClientID: "laptop"}
	if code := b.post(t, bobLaptop, "alice", "phone", postBodyJSON("from b", "")); code != http.StatusOK {
		t.Fatalf("post on b to a's device: %d", code)
	}
	if ev := alice.nextEvent(t); ev.id != "bob:laptop" || ev.event != "" || !sameList(ev.data, "from b") {
		t.Fatalf("a got %+v", ev)
	}

	// A device connected nowhere: 404 without waiting for the timeout.
	start := time.Now()
	if code := a.post(t, alicePhone, "bob", "tablet", postBodyJSON("x", "")); code != http.StatusNotFound {
		t.Fatalf("post to unknown device: %d", code)
	}
	if d := time.Since(start); d > DefaultRequestTimeout/2 {
		t.Errorf("404 took %v", d)
	}

	// Union of the device lists.
	_ = b.subscribe(t, "alice", "tablet")
	for name, in := range map[string]*instance{"a": a, "b": b} {
		testutil.Eventually(t, 5*time.Second, "union on "+name, func() bool {
			return sameList(in.deviceList(t, "alice"), "phone", "tablet")
		})
	}

	// Ids that are not valid NATS tokens.
	odd := claim.Claim{UserID: "u.1 *", ClientID: "my.phone>"}
	oddStream := b.subscribe(t, odd.UserID, odd.ClientID)
	target := url.PathEscape(odd.UserID) + "/device/" + url.PathEscape(odd.ClientID)
	if code := a.post(t, alicePhone, url.PathEscape(odd.UserID), url.PathEscape(odd.ClientID), postBodyJSON("odd", "")); code != http.StatusOK {
		t.Fatalf("post to %s: %d", target, code)
	}
	if ev := oddStream.nextEvent(t); !sameList(ev.data, "odd") {
		t.Fatalf("odd got %+v", ev)
	}
	testutil.Eventually(t, 5*time.Second, "odd device listed on a", func() bool {
		return sameList(a.deviceList(t, url.PathEscape(odd.UserID)), odd.ClientID)
	})
	// A wildcard-looking id must not reach other devices.
	if code := a.post(t, alicePhone, "bob", url.PathEscape("*"), postBodyJSON("x", "")); code != http.StatusNotFound {
		t.Fatalf("post to device '*': %d", code)
	}

	// A newer subscription of alice/phone on B replaces the one on A.
	alice2 := b.subscribe(t, "alice", "phone")
	alice.waitEnded(t, 5*time.Second)
	if code := a.post(t, bobLaptop, "alice", "phone", postBodyJSON("to the new one", "")); code != http.StatusOK {
		t.Fatalf("post after replacement: %d", code)
	}
	if ev := alice2.nextEvent(t); !sameList(ev.data, "to the new one") {
		t.Fatalf("new stream got %+v", ev)
	}
	for name, in := range map[string]*instance{"a": a, "b": b} {
		testutil.Eventually(t, 5*time.Second, "list after replacement on "+name, func() bool {
			return sameList(in.deviceList(t, "alice"), "phone", "tablet")
		})
	}

	// Leaving shows on the other instance.
	bob.close()
	testutil.Eventually(t, 5*time.Second, "bob's laptop to leave a's list", func() bool {
		return sameList(a.deviceList(t, "bob"))
	})
}

// TestClusterDeltas: with heartbeats too slow to matter, a starting instance
// learns the others' devices at once, and joins, leaves and goodbyes travel
// as they happen.
func TestClusterDeltas(t *testing.T) {
	leakCheck(t)
	natsURL := startNATS(t)
	slow := time.Minute
	b := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "b", Heartbeat: slow})
	_ = b.subscribe(t, "bob", "laptop")
	a := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "a", Heartbeat: slow})
	testutil.Eventually(t, 5*time.Second, "a to learn b's devices on start", func() bool {
		return sameList(a.deviceList(t, "bob"), "laptop")
	})
	phone := b.subscribe(t, "bob", "phone")
	testutil.Eventually(t, 5*time.Second, "join delta", func() bool {
		return sameList(a.deviceList(t, "bob"), "laptop", "phone")
	})
	phone.close()
	testutil.Eventually(t, 5*time.Second, "leave delta", func() bool {
		return sameList(a.deviceList(t, "bob"), "laptop")
	})
	if err := b.svc.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, "goodbye", func() bool {
		return sameList(a.deviceList(t, "bob"))
	})
}

// TestClusterExpiry: an instance that vanishes without a goodbye (its NATS
// connection dies, as when its process is killed) drops out of the other
// instances' device lists within a few heartbeats.
func TestClusterExpiry(t *testing.T) {
	leakCheck(t)
	natsURL := startNATS(t)
	a := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "a", Heartbeat: testBeat})
	ncB := testutil.ConnectNATS(t, natsURL)
	b := newInstance(t, Config{NATS: ncB, InstanceID: "b", Heartbeat: testBeat})
	_ = b.subscribe(t, "bob", "laptop")
	_ = a.subscribe(t, "bob", "phone")
	testutil.Eventually(t, 5*time.Second, "union", func() bool {
		return sameList(a.deviceList(t, "bob"), "laptop", "phone")
	})
	// Let a few heartbeats prove that a steady state stays listed.
	holdsFor(t, 4*expiryBeats*testBeat, testBeat/2, func() {
		if l := a.deviceList(t, "bob"); !sameList(l, "laptop", "phone") {
			t.Fatalf("steady state lost a device: %q", l)
		}
	})

	start := time.Now()
	ncB.Close() // b vanishes: no goodbye, no leave
	testutil.Eventually(t, 20*expiryBeats*testBeat, "b's device to expire", func() bool {
		return sameList(a.deviceList(t, "bob"), "phone")
	})
	took := time.Since(start)
	t.Logf("vanished instance dropped after %v (heartbeat %v)", took, testBeat)
	if code := a.post(t, alicePhone, "bob", "laptop", postBodyJSON("x", "")); code != http.StatusNotFound {
		t.Fatalf("post to vanished device: %d", code)
	}
}

// TestClusterMixedHeartbeats: an instance with a fast heartbeat does not
// expire one with a slow heartbeat between its beats.
func TestClusterMixedHeartbeats(t *testing.T) {
	leakCheck(t)
	natsURL := startNATS(t)
	fast := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "fast", Heartbeat: testBeat})
	slowBeat := 8 * testBeat
	slow := newInstance(t, Config{NATS: testutil.ConnectNATS(t, natsURL), InstanceID: "slow", Heartbeat: slowBeat})
	_ = slow.subscribe(t, "bob", "laptop")
	testutil.Eventually(t, 5*time.Second, "fast to list slow's device", func() bool {
		return sameList(fast.deviceList(t, "bob"), "laptop")
	})
	holdsFor(t, 3*slowBeat, testBeat/2, func() {
		if l := fast.deviceList(t, "bob"); !sameList(l, "laptop") {
			t.Fatalf("slow instance's device dropped between its heartbeats: %q", l)
		}
	})
}

// TestClusterLargeSnapshot: a snapshot larger than the NATS max payload
// allows travels in parts, and a starting instance learns all of it.
func TestClusterLargeSnapshot(t *testing.T) {
	leakCheck(t)
	natsURL := startNATS(t, func(o *server.Options) { o.MaxPayload = 8 << 10 })
	cfg := Config{Heartbeat: time.Minute, MaxData: 1 << 10}
	cfg.NATS, cfg.InstanceID = testutil.ConnectNATS(t, natsURL), "b"
	b := newInstance(t, cfg)
	var want []string
	for i := range 40 {
		d := fmt.Sprintf("%03d-%s", i, strings.Repeat("d", 200))
		want = append(want, d)
		_ = b.subscribe(t, "bob", d)
	}
	cfg.NATS, cfg.InstanceID = testutil.ConnectNATS(t, natsURL), "a"
	a := newInstance(t, cfg)
	testutil.Eventually(t, 5*time.Second, "a to learn all of b's devices", func() bool {
		return sameList(a.deviceList(t, "bob"), want...)
	})
	if code := a.post(t, alicePhone, "bob", want[39], postBodyJSON("x", "")); code != http.StatusOK {
		t.Fatalf("post: %d", code)
	}
}

// holdsFor runs check every interval for the whole window d: it samples a
// property that must keep holding (a negative result needs the time to
// pass), which is not a wait for an event.
func holdsFor(t *testing.T, d, interval time.Duration, check func()) {
	t.Helper()
	end := time.After(d)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		check()
		select {
		case <-end:
			return
		case <-tick.C:
		}
	}
}
