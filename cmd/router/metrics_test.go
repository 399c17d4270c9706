package main

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/beepclient"

	"github.com/beepvoice/router/internal/testutil"
)

func scrape(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric returns the value of the first sample matching name{labels}.
func metric(t *testing.T, body, sample string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(sample) + ` ([0-9.e+-]+)$`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no sample %s in metrics", sample)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetricsAndHealth(t *testing.T) {
	maddr := testutil.FreeAddr(t)
	r := startRouter(t, map[string]string{"METRICS_LISTEN": maddr})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	a := r.dial("alice", beepclient.Options{Publish: true})
	b := r.dial("bob", beepclient.Options{Receive: 1})
	if err := pace(a, 'a', 0, 80, loud); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['a'] >= 75
	}); err != nil {
		t.Fatal(err)
	}
	code, body := scrape(t, "http://"+maddr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	checks := []struct {
		sample string
		min    float64
	}{
		{"router_peers", 2},
		// Both peers connected with the direct egress path (EGRESS=direct).
		{"router_peers_direct_egress", 2},
		{"router_conversations", 1},
		{"router_tracks", 1},
		{"router_slots", 1},
		// Readers add to the shared count every 64 packets.
		{"router_rtp_packets_in_total", 64},
		{"router_rtp_packets_out_total", 75},
		{`router_stage_events_total{event="forwarded",stage="forwarder"}`, 75},
		{`router_stage_events_total{event="drop_not_member",stage="permission-gate"}`, 0},
		{"router_nats_connected", 1},
		{"router_forward_latency_seconds_count", 75},
		{"go_goroutines", 1},
	}
	for _, c := range checks {
		if v := metric(t, body, c.sample); v < c.min {
			t.Errorf("%s = %v, want at least %v", c.sample, v, c.min)
		}
	}
	// The latency the router adds, counted from the kernel's arrival time,
	// is positive and, on an idle loopback, well under 100 ms.
	if n, sum := metric(t, body, "router_forward_latency_seconds_count"), metric(t, body, "router_forward_latency_seconds_sum"); sum <= 0 || sum/n > 0.1 {
		t.Errorf("forward latency: %v s over %v packets", sum, n)
	}
	if code, _ := scrape(t, "http://"+maddr+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
	if code, _ := scrape(t, "http://"+maddr+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d", code)
	}
	// The media port does not serve them when METRICS_LISTEN is set.
	if code, _ := scrape(t, r.url("/metrics")); code != http.StatusNotFound {
		t.Errorf("/metrics on LISTEN: %d, want 404", code)
	}
}

// TestNATSDown: a router whose external NATS is down at start still starts
// and serves calls, and says it is not ready; it becomes ready when NATS
// comes up, and unready again when NATS goes away.
func TestNATSDown(t *testing.T) {
	ns := testutil.NewNATS(t)
	a := startExternal(t, ns.URL())
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool {
		code, _ := scrape(t, "http://"+a.addr()+"/readyz")
		return code == http.StatusServiceUnavailable
	}); err != nil {
		t.Fatal("/readyz is not 503 while NATS is down")
	}
	ns.Start()
	if err := testutil.Until(deadline(t, 10*time.Second), func() bool {
		code, _ := scrape(t, "http://"+a.addr()+"/readyz")
		return code == http.StatusOK
	}); err != nil {
		t.Fatal("/readyz is not 200 after NATS came up")
	}
	ns.Stop()
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool {
		code, _ := scrape(t, "http://"+a.addr()+"/readyz")
		return code == http.StatusServiceUnavailable
	}); err != nil {
		t.Fatal("/readyz is not 503 after NATS went away")
	}
}
