package main

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// snap is a histogram snapshot over the bounds 1, 2 and 4 ms and +Inf.
func snap(count, sum float64, cum ...float64) *promHist {
	return &promHist{bounds: []float64{0.001, 0.002, 0.004, math.Inf(1)}, counts: cum, count: count, sum: sum}
}

func TestForwardLatencyQuantiles(t *testing.T) {
	none := math.NaN()
	for _, tc := range []struct {
		name           string
		start, end     *promHist
		p50, p99, mean float64 // ms; NaN: none
		samples        uint64
	}{
		{
			// p50: rank 50 lies in (1, 2] ms, 40 of its 50: 1.8 ms;
			// p99: rank 99 in (2, 4] ms, 39 of its 40: 3.95 ms.
			name:  "from zero",
			start: snap(0, 0, 0, 0, 0, 0), end: snap(100, 0.2, 10, 60, 100, 100),
			p50: 1.8, p99: 3.95, mean: 2, samples: 100,
		},
		{
			name:  "start subtracted",
			start: snap(10, 0.01, 5, 10, 10, 10), end: snap(110, 0.21, 15, 70, 110, 110),
			p50: 1.8, p99: 3.95, mean: 2, samples: 100,
		},
		{
			name:  "series new in the window",
			start: nil, end: snap(100, 0.2, 10, 60, 100, 100),
			p50: 1.8, p99: 3.95, mean: 2, samples: 100,
		},
		{
			// The first bucket interpolates from 0.
			name:  "all in the first bucket",
			start: snap(0, 0, 0, 0, 0, 0), end: snap(4, 0.002, 4, 4, 4, 4),
			p50: 0.5, p99: 0.99, mean: 0.5, samples: 4,
		},
		{
			// A rank in the +Inf bucket gives the highest finite bound.
			name:  "beyond the last bound",
			start: snap(0, 0, 0, 0, 0, 0), end: snap(10, 0.1, 0, 0, 0, 10),
			p50: 4, p99: 4, mean: 10, samples: 10,
		},
		{
			name:  "p99 at the top of a bucket",
			start: snap(0, 0, 0, 0, 0, 0), end: snap(100, 0.1, 0, 99, 100, 100),
			p50: 1 + 50.0/99, p99: 2, mean: 1, samples: 100,
		},
		{
			name:  "empty diff",
			start: snap(7, 0.02, 1, 5, 7, 7), end: snap(7, 0.02, 1, 5, 7, 7),
			p50: none, p99: none, mean: none, samples: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := tc.end.sub(tc.start)
			if err != nil {
				t.Fatal(err)
			}
			got := forwardLatency(d)
			check := func(what string, v *float64, want float64) {
				t.Helper()
				switch {
				case math.IsNaN(want) && v != nil:
					t.Errorf("%s = %v ms, want none", what, *v)
				case !math.IsNaN(want) && v == nil:
					t.Errorf("%s none, want %v ms", what, want)
				case v != nil && math.Abs(*v-want) > 1e-9:
					t.Errorf("%s = %v ms, want %v", what, *v, want)
				}
			}
			check("p50", got.P50, tc.p50)
			check("p99", got.P99, tc.p99)
			check("mean", got.Mean, tc.mean)
			if got.Samples != tc.samples {
				t.Errorf("samples %d, want %d", got.Samples, tc.samples)
			}
		})
	}
}

func TestForwardLatencyMismatch(t *testing.T) {
	end := snap(10, 0.01, 5, 10, 10, 10)
	if _, err := end.sub(snap(20, 0.02, 10, 20, 20, 20)); err == nil {
		t.Error("counts that went down: no error")
	}
	other := &promHist{bounds: []float64{0.001, math.Inf(1)}, counts: []float64{1, 1}, count: 1}
	if _, err := end.sub(other); err == nil {
		t.Error("different buckets: no error")
	}
	var logged []string
	logf := func(f string, a ...any) { logged = append(logged, f) }
	if f := forwardLatencyOver(nil, nil, nil, logf); f != nil || len(logged) != 1 {
		t.Errorf("absent metric: %+v, logged %q", f, logged)
	}
	if f := forwardLatencyOver(snap(20, 0.02, 10, 20, 20, 20), end, nil, logf); f != nil {
		t.Errorf("router restarted: %+v", f)
	}
}

const exposition = `# HELP router_peers Peer connections (devices), connected or connecting.
# TYPE router_peers gauge
router_peers 4
# HELP router_forward_latency_seconds The router's own added latency per received RTP packet.
# TYPE router_forward_latency_seconds histogram
router_forward_latency_seconds_bucket{le="5e-05"} 1
router_forward_latency_seconds_bucket{le="0.0001"} 3
router_forward_latency_seconds_bucket{le="0.001"} 9
router_forward_latency_seconds_bucket{le="+Inf"} 10
router_forward_latency_seconds_sum 0.0123
router_forward_latency_seconds_count 10
# HELP router_stage_packet_seconds Time one packet spends in a stage.
# TYPE router_stage_packet_seconds histogram
router_stage_packet_seconds_bucket{stage="a",le="1e-06"} 1
router_stage_packet_seconds_bucket{stage="a",le="+Inf"} 2
router_stage_packet_seconds_sum{stage="a"} 3e-06
router_stage_packet_seconds_count{stage="a"} 2
router_stage_packet_seconds_bucket{stage="b",le="1e-06"} 4
router_stage_packet_seconds_bucket{stage="b",le="+Inf"} 4
router_stage_packet_seconds_sum{stage="b"} 2e-06
router_stage_packet_seconds_count{stage="b"} 4
`

func TestParseHistogram(t *testing.T) {
	h, err := parseHistogram(strings.NewReader(exposition), forwardLatencyMetric)
	if err != nil {
		t.Fatal(err)
	}
	want := &promHist{bounds: []float64{5e-5, 1e-4, 1e-3, math.Inf(1)}, counts: []float64{1, 3, 9, 10}, count: 10, sum: 0.0123}
	if h == nil || !equalHist(h, want) {
		t.Fatalf("parsed %+v, want %+v", h, want)
	}
	// p50: rank 5 in (0.1, 1] ms, 2 of its 6.
	if f := forwardLatency(h); f.P50 == nil || math.Abs(*f.P50-(0.1+0.9*2/6)) > 1e-9 || f.Samples != 10 {
		t.Errorf("forward latency %+v", f)
	}

	// Series with labels are summed, as sum by (le) does.
	h, err = parseHistogram(strings.NewReader(exposition), "router_stage_packet_seconds")
	want = &promHist{bounds: []float64{1e-6, math.Inf(1)}, counts: []float64{5, 6}, count: 6, sum: 5e-6}
	if err != nil || h == nil || !equalHist(h, want) {
		t.Errorf("summed series: %+v, %v; want %+v", h, err, want)
	}

	// An older router: no such histogram.
	if h, err := parseHistogram(strings.NewReader(exposition), "router_no_such_seconds"); h != nil || err != nil {
		t.Errorf("absent histogram: %+v, %v", h, err)
	}
	if _, err := parseHistogram(strings.NewReader(exposition), "router_peers"); err == nil {
		t.Error("a gauge: no error")
	}
	if _, err := parseHistogram(strings.NewReader("router_forward_latency_seconds_bucket{le=\"1\" 3\n"), forwardLatencyMetric); err == nil {
		t.Error("malformed exposition: no error")
	}
}

func equalHist(a, b *promHist) bool {
	eq := func(x, y []float64) bool {
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if x[i] != y[i] && math.Abs(x[i]-y[i]) > 1e-12 {
				return false
			}
		}
		return true
	}
	return eq(a.bounds, b.bounds) && eq(a.counts, b.counts) && a.count == b.count && math.Abs(a.sum-b.sum) < 1e-12
}

// TestScrapeHistogram scrapes a Prometheus registry with the router's
// histogram (as the router registers it) from a local HTTP server, before
// and after observations, and a server without /metrics.
func TestScrapeHistogram(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    forwardLatencyMetric,
		Help:    "The router's own added latency per received RTP packet.",
		Buckets: prometheus.ExponentialBucketsRange(50e-6, 1, 48),
	})
	reg.MustRegister(h)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := httptest.NewServer(mux) // on 127.0.0.1
	defer srv.Close()
	ctx := context.Background()

	for i := 0; i < 50; i++ {
		h.Observe(1) // before the window: subtracted
	}
	start, err := scrapeHistogram(ctx, srv.Client(), srv.URL, forwardLatencyMetric)
	if err != nil || start == nil || len(start.bounds) != 49 {
		t.Fatalf("start: %+v, %v", start, err)
	}
	// 100 observations from 0.1 to 10 ms: p50 near 5 ms, p99 near 9.9 ms,
	// within the bucket resolution (ratio about 1.23).
	for i := 1; i <= 100; i++ {
		h.Observe(float64(i) * 1e-4)
	}
	end, err := scrapeHistogram(ctx, srv.Client(), srv.URL, forwardLatencyMetric)
	if err != nil || end == nil {
		t.Fatalf("end: %+v, %v", end, err)
	}
	d, err := end.sub(start)
	if err != nil {
		t.Fatal(err)
	}
	f := forwardLatency(d)
	near := func(v *float64, want float64) bool { return v != nil && *v > want/1.25 && *v < want*1.25 }
	if f.Samples != 100 || !near(f.P50, 5) || !near(f.P99, 9.9) || !near(f.Mean, 5.05) {
		t.Errorf("forward latency p50 %v p99 %v mean %v ms of %d samples; want about 5, 9.9, 5.05 of 100",
			deref(f.P50), deref(f.P99), deref(f.Mean), f.Samples)
	}

	if h, err := scrapeHistogram(ctx, srv.Client(), srv.URL, "router_no_such_seconds"); h != nil || err != nil {
		t.Errorf("absent histogram: %+v, %v", h, err)
	}
	none := httptest.NewServer(http.NotFoundHandler())
	defer none.Close()
	if h, err := scrapeHistogram(ctx, none.Client(), none.URL, forwardLatencyMetric); h != nil || err != nil {
		t.Errorf("no /metrics (404): %+v, %v", h, err)
	}
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer broken.Close()
	if _, err := scrapeHistogram(ctx, broken.Client(), broken.URL, forwardLatencyMetric); err == nil {
		t.Error("HTTP 500: no error")
	}
}

func deref(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}
