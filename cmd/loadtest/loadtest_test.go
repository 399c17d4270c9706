package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// TestMain lets the test binary act as the router harness, so that
// -router-self (which starts os.Executable() -serve-router) works in tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "-serve-router" || os.Args[1] == "-serve-floor") {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func readReport(t *testing.T, path string) report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("JSON report does not parse: %v\n%s", err, b)
	}
	return rep
}

// testHarness starts the harness router in-process for one test.
func testHarness(t *testing.T) *harness { t.Helper(); return loggingHarness(t, io.Discard) }

// loggingHarness is testHarness with the router's log written to w.
func loggingHarness(t *testing.T, w io.Writer) *harness {
	t.Helper()
	h, err := startHarness(slog.New(slog.NewTextHandler(w, nil)), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := h.close(ctx); err != nil {
			t.Errorf("harness close: %v", err)
		}
	})
	return h
}

// TestTinyLoad runs 2 publishers and 2 subscribers in one conversation for
// 2 s against the harness router in-process, through the command line.
func TestTinyLoad(t *testing.T) {
	h := testHarness(t)
	js := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := run([]string{
		"-url", h.URL(), "-router-pid", strconv.Itoa(os.Getpid()),
		"-publishers", "2", "-subscribers", "2", "-conversations", "1",
		"-rate", "100", "-settle", "300ms", "-hold", "2s", "-grace", "500ms",
		"-framing", "prefixed", "-timeout", "60s", "-json", js,
	}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	rep := readReport(t, js)
	if len(rep.Runs) != 1 {
		t.Fatalf("%d runs in the report, want 1", len(rep.Runs))
	}
	r := rep.Runs[0]
	if r.Devices.Connected != 4 || r.Devices.Failed != 0 {
		t.Errorf("devices: %+v", r.Devices)
	}
	// 2 publishers × 50 packets/s × 2 s, each to 2 subscribers.
	if r.Egress.Received == 0 || r.Egress.PPS < 100 {
		t.Errorf("egress %d packets (%.0f/s), want about 400 (200/s)", r.Egress.Received, r.Egress.PPS)
	}
	if r.Loss.Pct > 2 || r.Egress.DeliveryPct < 90 {
		t.Errorf("loss %.2f %%, delivery %.1f %%", r.Loss.Pct, r.Egress.DeliveryPct)
	}
	if r.Loss.SlotsReceiving != 4 || r.Loss.SlotsExpected != 4 {
		t.Errorf("slots receiving %d, expected %d; want 4", r.Loss.SlotsReceiving, r.Loss.SlotsExpected)
	}
	if !(r.LatencyMS.P50 > 0 && r.LatencyMS.P50 <= r.LatencyMS.P99 && r.LatencyMS.P99 <= r.LatencyMS.Max) {
		t.Errorf("latency percentiles: %+v", r.LatencyMS)
	}
	// Every packet's wire latency is at most its latency at the app, so
	// each quantile is too (the histograms hold the same packets when
	// none lacks a wire time).
	wl := r.WireLatencyMS
	switch {
	case wl == nil:
		t.Error("no wire latency in the report")
	case wl.Samples == 0 || wl.Samples+wl.NoWireTime != r.Egress.Received:
		t.Errorf("wire latency of %d packets (%d without a wire time); %d received", wl.Samples, wl.NoWireTime, r.Egress.Received)
	case !(wl.P50 > 0 && wl.P50 <= wl.P99 && wl.P99 <= wl.Max):
		t.Errorf("wire latency percentiles: %+v", *wl)
	case wl.NoWireTime == 0 && (wl.P50 > r.LatencyMS.P50 || wl.P99 > r.LatencyMS.P99 || wl.Max > r.LatencyMS.Max):
		t.Errorf("wire latency %+v above the latency at the app %+v", *wl, r.LatencyMS)
	}
	if r.Router == nil || r.Router.CPUSeconds <= 0 || r.Router.RSSPeakKiB <= 0 {
		t.Errorf("router figures: %+v", r.Router)
	}
	if !strings.Contains(out.String(), "2x2") {
		t.Errorf("no table row for 2x2 in:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "wire p50") {
		t.Errorf("no wire latency columns in:\n%s", out.String())
	}
	checkForwardLatency(t, js, r, out.String())
	// The harness's /metrics parses, and its labelled pipeline histogram
	// is found there.
	if sh, err := scrapeHistogram(context.Background(), http.DefaultClient, h.URL(), "router_stage_packet_seconds"); err != nil || sh == nil {
		t.Errorf("harness /metrics: router_stage_packet_seconds: %+v, %v", sh, err)
	}
}

// checkForwardLatency checks the fwd figures of run r: a JSON key (null
// when the router does not export router_forward_latency_seconds, as
// before the router had it), the table columns and, when the router
// exports it, samples and ordered quantiles.
func checkForwardLatency(t *testing.T, jsonPath string, r *runResult, table string) {
	t.Helper()
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Runs []map[string]json.RawMessage `json:"runs"`
	}
	if err := json.Unmarshal(b, &raw); err != nil || len(raw.Runs) == 0 {
		t.Fatalf("JSON runs: %v", err)
	}
	if _, ok := raw.Runs[0]["router_forward_latency_ms"]; !ok {
		t.Error("no router_forward_latency_ms in the JSON report")
	}
	if !strings.Contains(table, "fwd p50") || !strings.Contains(table, "fwd: the router's own added latency") {
		t.Errorf("no fwd column or legend in:\n%s", table)
	}
	f := r.RouterForwardMS
	if f == nil {
		t.Logf("the router does not export %s: no fwd figures to check", forwardLatencyMetric)
		return
	}
	if f.Samples == 0 || f.P50 == nil || f.P99 == nil || f.Mean == nil || !(*f.P50 > 0 && *f.P50 <= *f.P99 && *f.Mean > 0) {
		t.Errorf("fwd latency: p50 %v p99 %v mean %v ms of %d samples", deref(f.P50), deref(f.P99), deref(f.Mean), f.Samples)
	}
}

// TestWireLatencyPerPacket publishes timestamped packets through the
// harness router to a subscriber with kernel arrival times: every packet
// it receives has one, after its send time and no later than its read.
func TestWireLatencyPerPacket(t *testing.T) {
	h := testHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := &loadConfig{URL: h.URL(), DialTimeout: 20 * time.Second}
	k, err := newConnector(cfg, &window{})
	if err != nil {
		t.Fatal(err)
	}
	defer k.close()
	dial := func(user string, o beepclient.Options) *beepclient.Client {
		t.Helper()
		o.URL, o.Claim = k.ws[0], claim.Claim{UserID: user, ClientID: user + "-dev"}
		if err := k.join(ctx, k.bases[0], o.Claim, "wire"); err != nil {
			t.Fatal(err)
		}
		c, err := beepclient.Dial(ctx, o)
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(c.Close)
		return c
	}
	pub := dial("alice", beepclient.Options{Publish: true})
	sub := dial("bob", beepclient.Options{Receive: 1, ArrivalTimes: true})

	const n = 50
	payload := make([]byte, 60)
	payload[0] = 0xf8
	tick := time.NewTicker(20 * time.Millisecond) // paced like audio
	defer tick.Stop()
	for i := 0; i < n; i++ {
		binary.BigEndian.PutUint64(payload[1:9], uint64(time.Now().UnixNano()))
		if err := pub.Send(payload, 20); err != nil {
			t.Fatal(err)
		}
		<-tick.C
	}
	if err := sub.WaitFor(ctx, func(r map[string][]beepclient.Packet) bool {
		total := 0
		for _, ps := range r {
			total += len(ps)
		}
		return total >= n*9/10
	}); err != nil {
		t.Fatalf("waiting for packets: %v", err)
	}
	for mid, ps := range sub.Received() {
		for _, p := range ps {
			sent := time.Unix(0, int64(binary.BigEndian.Uint64(p.Payload[1:9])))
			switch {
			case p.Arrived.IsZero():
				t.Errorf("mid %s seq %d: no arrival time", mid, p.SequenceNumber)
			case !p.Arrived.After(sent) || p.Arrived.After(p.At) || p.At.Sub(sent) > 5*time.Second:
				t.Errorf("mid %s seq %d: sent %v, arrived %v, read %v", mid, p.SequenceNumber,
					sent.Format(time.StampNano), p.Arrived.Format(time.StampNano), p.At.Format(time.StampNano))
			}
		}
	}
}

// TestRouterSelf starts the harness as a subprocess (-router-self): an idle
// run with a heap profile, then a one-second load with a CPU profile.
func TestRouterSelf(t *testing.T) {
	dir := t.TempDir()
	js := filepath.Join(dir, "idle.json")
	heap := filepath.Join(dir, "heap.pprof")
	var out, errb bytes.Buffer
	code := run([]string{"-router-self", "-idle", "3", "-idle-warmup", "1", "-settle", "200ms", "-rate", "100",
		"-heapprofile", heap, "-json", js, "-timeout", "60s"}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("idle: exit code %d", code)
	}
	rep := readReport(t, js)
	if rep.Idle == nil || rep.Idle.Connected != 3 || rep.Idle.RSSAfterKiB <= 0 || rep.Idle.Harness == nil || rep.Idle.Harness.After.Peers < 4 {
		t.Errorf("idle report: %+v", rep.Idle)
	}
	for _, f := range []string{heap, heap + ".before"} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Errorf("heap profile %s: %v", f, err)
		}
	}

	js = filepath.Join(dir, "load.json")
	cpu := filepath.Join(dir, "cpu.pprof")
	out.Reset()
	errb.Reset()
	code = run([]string{"-router-self", "-publishers", "1", "-subscribers", "1", "-settle", "200ms", "-hold", "1s",
		"-grace", "300ms", "-cpuprofile", cpu, "-json", js, "-timeout", "60s"}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("load: exit code %d", code)
	}
	rep = readReport(t, js)
	if len(rep.Runs) != 1 || rep.Runs[0].Egress.Received == 0 || rep.Runs[0].Router == nil {
		t.Fatalf("load report: %+v", rep.Runs)
	}
	checkForwardLatency(t, js, rep.Runs[0], out.String())
	if st, err := os.Stat(cpu); err != nil || st.Size() == 0 {
		t.Errorf("cpu profile: %v", err)
	}
}

func TestRefusesRemoteRouter(t *testing.T) {
	for _, tc := range []struct {
		url    string
		remote bool
		ok     bool
	}{
		{"http://127.0.0.1:8080", false, true},
		{"http://127.9.9.9:80", false, true},
		{"http://[::1]:8080", false, true},
		{"http://localhost:8080", false, true},
		{"http://10.1.2.3:8080", false, false},
		{"https://router.example.org", false, false},
		{"http://192.168.0.2:8080", true, true},
		{"ftp://127.0.0.1", false, false},
		{"http://127.0.0.1:8080/connect", false, false},
	} {
		err := checkURL(tc.url, tc.remote)
		if (err == nil) != tc.ok {
			t.Errorf("checkURL(%q, remote=%v) = %v", tc.url, tc.remote, err)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"-url", "http://10.0.0.1:8080"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "loopback") {
		t.Errorf("a remote URL: exit code %d, stderr %q", code, errb.String())
	}
	if code := run([]string{"-router-self", "-router-env", "ICE_IPS=10.0.0.1", "-hold", "1s"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "not allowed") {
		t.Errorf("-router-env ICE_IPS: exit code %d, stderr %q", code, errb.String())
	}
}

func TestHistQuantiles(t *testing.T) {
	h := newHist()
	for i := 1; i <= 10000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, q := range []float64{0.5, 0.95, 0.99} {
		got, want := h.quantile(q), q*10000
		if math.Abs(got-want)/want > 0.02 {
			t.Errorf("q%.2f = %.0f µs, want %.0f ± 2 %%", q, got, want)
		}
	}
	if h.quantile(1) != 10000 {
		t.Errorf("max %v", h.quantile(1))
	}
	for us := uint64(0); us < 1<<20; us = us*9/8 + 1 {
		i := histIndex(us)
		if lo, hi := histLow(i), histLow(i+1); us < lo || us >= hi {
			t.Fatalf("%d µs in bucket %d [%d, %d)", us, i, lo, hi)
		}
	}
}

func TestSeqTracker(t *testing.T) {
	var s seqTracker
	type step struct {
		seq       uint16
		ext       uint64
		dup, late bool
	}
	base := uint64(1 << 32)
	for i, st := range []step{
		{65530, base + 65530, false, false},
		{65532, base + 65532, false, false},
		{65531, base + 65531, false, true}, // late, fills the gap
		{65531, base + 65531, true, false}, // duplicate
		{2, base + 65538, false, false},    // wraps
		{65533, base + 65533, false, true},
		{200, base + 65736, false, false},  // 198 ahead: the window restarts
		{65533, base + 65533, false, true}, // beyond the window: late, not known as duplicate
	} {
		ext, dup, late := s.update(st.seq)
		if ext != st.ext || dup != st.dup || late != st.late {
			t.Errorf("step %d: update(%d) = %d, %v, %v; want %d, %v, %v", i, st.seq, ext, dup, late, st.ext, st.dup, st.late)
		}
	}
}

// TestMultiRouterLoad runs the real router binary as two processes on one
// NATS (multi-router mode, -routers 1,2 -spread both): 2 publishers and 4
// subscribers spread over both routers, every subscriber hears both
// publishers (one of them through the relay), each router's figures and
// relayed packets are reported, and the relay's cost is set against the
// control run that put the conversation on one router (nothing relayed).
func TestMultiRouterLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs router processes")
	}
	bin := filepath.Join(t.TempDir(), "router")
	if out, err := exec.Command("go", "build", "-o", bin, "../router").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	js := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := run([]string{
		"-router-bin", bin, "-routers", "1,2", "-spread", "both",
		"-publishers", "2", "-subscribers", "4",
		"-rate", "100", "-settle", "1s", "-hold", "2s", "-grace", "500ms", "-timeout", "120s", "-json", js,
	}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	rep := readReport(t, js)
	if len(rep.Runs) != 3 {
		t.Fatalf("%d runs, want 3 (one router; two, by conversation; two)", len(rep.Runs))
	}
	if rep.Runs[0].Cluster != nil {
		t.Errorf("the one-router run has cluster figures: %+v", rep.Runs[0].Cluster)
	}
	if c := rep.Runs[1]; c.Name != "2x4 R=2 by-conv" || c.Cluster == nil || c.Cluster.RelayedInPPS != 0 || c.Cluster.RelayedOutPPS != 0 || c.Egress.DeliveryPct < 90 {
		t.Errorf("control run %q relayed or lost: %+v %+v", c.Name, c.Cluster, c.Egress)
	}
	r := rep.Runs[2]
	if r.Name != "2x4 R=2" || r.Devices.Connected != 6 {
		t.Fatalf("run %q: %+v", r.Name, r.Devices)
	}
	// Each subscriber hears both publishers, one of them relayed.
	if r.Loss.SlotsReceiving != 8 || r.Egress.DeliveryPct < 90 {
		t.Errorf("slots receiving %d of 8, delivery %.1f %%", r.Loss.SlotsReceiving, r.Egress.DeliveryPct)
	}
	cl := r.Cluster
	if cl == nil || len(cl.Routers) != 2 {
		t.Fatalf("cluster figures: %+v", cl)
	}
	for _, s := range cl.Routers {
		// Each router relays its publisher's 50 packets/s to the other.
		if s.PID <= 0 || s.Cores <= 0 || s.EgressPPS < 100 || s.RelayedOutPPS < 25 || s.RelayedInPPS < 25 {
			t.Errorf("router %d: %+v", s.Index+1, s)
		}
		// The frames travel in NATS messages: one each, or fewer in
		// batches (5 %: the two counters are read one after the other,
		// at each end of the window).
		if s.RelayMessagesOutPS <= 0 || s.RelayMessagesOutPS > 1.05*s.RelayedOutPPS || s.RelayMessagesInPS <= 0 || s.RelayMessagesInPS > 1.05*s.RelayedInPPS {
			t.Errorf("router %d's relay messages: %+v", s.Index+1, s)
		}
	}
	if r.Router == nil || r.Router.Cores < cl.Routers[0].Cores+cl.Routers[1].Cores-1e-9 {
		t.Errorf("router figures do not sum the routers': %+v", r.Router)
	}
	if cl.RelayUSPerPacket == nil || cl.VsRun == nil || *cl.VsRun != 1 {
		t.Errorf("no relay cost against the control run: %+v", cl)
	}
	if !strings.Contains(out.String(), "router 2:") || !strings.Contains(out.String(), "the relay added") {
		t.Errorf("no per-router or relay lines in:\n%s", out.String())
	}
}

// TestSRTPProfileFlag: -srtp aes-cm makes the clients offer only
// AES_CM_128_HMAC_SHA1_80, as Chromium's sessions end up: the router's
// peers log that profile (with the peer's AES-CM sealer), media flows, the
// report names it; an unknown value is refused before anything starts.
func TestSRTPProfileFlag(t *testing.T) {
	logs := &testutil.Buffer{}
	h := loggingHarness(t, logs)
	js := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := run([]string{
		"-url", h.URL(), "-router-pid", strconv.Itoa(os.Getpid()), "-srtp", "aes-cm",
		"-publishers", "2", "-subscribers", "2", "-conversations", "1",
		"-rate", "100", "-settle", "300ms", "-hold", "1s", "-grace", "500ms", "-timeout", "60s", "-json", js,
	}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	r := readReport(t, js).Runs[0]
	if r.SRTP != "aes-cm" {
		t.Errorf("the report's srtp is %q, want aes-cm", r.SRTP)
	}
	if r.Devices.Connected != 4 || r.Egress.Received == 0 {
		t.Errorf("devices %+v, %d packets received", r.Devices, r.Egress.Received)
	}
	const line = `srtp="SRTP_AES128_CM_HMAC_SHA1_80, one sealer"`
	testutil.Eventually(t, 10*time.Second, "4 peers logging AES-CM with the peer's sealer", func() bool { return strings.Count(logs.String(), line) >= 4 })
	if n := strings.Count(logs.String(), line); n != 4 {
		t.Errorf("%d peers logged AES-CM with the peer's sealer, want 4; router log:\n%s", n, logs.String())
	}

	out.Reset()
	errb.Reset()
	if code := run([]string{"-url", h.URL(), "-srtp", "des"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `-srtp "des"`) {
		t.Errorf("-srtp des: exit code %d, stderr %q; want 2 and the flag named", code, errb.String())
	}
}
