package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// forwardLatencyMetric is the router's histogram of its own added latency
// per received RTP packet, in seconds: from the kernel's receive time of
// the packet's datagram at the router's UDP socket to the forwarder's send
// of its last copy (packets without receivers are not observed). It has no
// labels; its buckets are prometheus.ExponentialBucketsRange(50e-6, 1, 48).
const forwardLatencyMetric = "router_forward_latency_seconds"

// scrapeTimeout bounds one GET of the router's /metrics.
const scrapeTimeout = 5 * time.Second

// promHist is one snapshot of a classic Prometheus histogram: cumulative
// bucket counts by upper bound, the last bound +Inf, with the _count and
// _sum of the series.
type promHist struct {
	bounds []float64 // upper bounds (le), ascending, the last +Inf
	counts []float64 // cumulative counts, one per bound
	count  float64
	sum    float64
}

// fwdLatencyMS is the router's own added latency over the steady window, in
// milliseconds, from the difference of two snapshots of its
// router_forward_latency_seconds histogram. The quantiles are interpolated
// inside their bucket as Prometheus' histogram_quantile does, so they are
// as fine as the buckets (about 23 % apart). Without samples the figures
// are null.
type fwdLatencyMS struct {
	P50     *float64 `json:"p50"`
	P99     *float64 `json:"p99"`
	Mean    *float64 `json:"mean"`
	Samples uint64   `json:"samples"`
}

// forwardLatency summarises d, a histogram of seconds, in milliseconds.
func forwardLatency(d *promHist) *fwdLatencyMS {
	out := &fwdLatencyMS{Samples: uint64(math.Round(max(0, d.count)))}
	ms := func(s float64) *float64 { v := s * 1000; return &v }
	if v, ok := d.quantile(0.5); ok {
		out.P50 = ms(v)
	}
	if v, ok := d.quantile(0.99); ok {
		out.P99 = ms(v)
	}
	if d.count > 0 {
		out.Mean = ms(d.sum / d.count)
	}
	return out
}

// quantile returns the q-quantile (0 ≤ q ≤ 1) of h the way Prometheus'
// histogram_quantile does: it finds the bucket that holds rank q·n and
// interpolates linearly between its bounds (from 0 for the first bucket);
// a rank in the +Inf bucket gives the highest finite bound. It reports
// false when h has no observations.
func (h *promHist) quantile(q float64) (float64, bool) {
	n := len(h.counts)
	if n < 2 || math.IsNaN(q) || q < 0 || q > 1 || h.counts[n-1] <= 0 {
		return 0, false
	}
	rank := q * h.counts[n-1]
	b := 0 // the first bucket with a count ≥ rank
	for b < n-1 && h.counts[b] < rank {
		b++
	}
	if b == n-1 {
		return h.bounds[n-2], true
	}
	if b == 0 && h.bounds[0] <= 0 {
		return h.bounds[0], true
	}
	lo, hi, inBucket := 0.0, h.bounds[b], h.counts[b]
	if b > 0 {
		lo = h.bounds[b-1]
		inBucket -= h.counts[b-1]
		rank -= h.counts[b-1]
	}
	if inBucket <= 0 {
		return lo, true
	}
	return lo + (hi-lo)*(rank/inBucket), true
}

// sub returns h − start: what the series observed between the two
// snapshots. A nil start counts as empty (the series did not exist yet).
func (h *promHist) sub(start *promHist) (*promHist, error) {
	d := &promHist{bounds: slices.Clone(h.bounds), counts: slices.Clone(h.counts), count: h.count, sum: h.sum}
	if start == nil {
		return d, nil
	}
	if !slices.Equal(h.bounds, start.bounds) {
		return nil, errors.New("the buckets changed between the snapshots")
	}
	for i := range d.counts {
		d.counts[i] -= start.counts[i]
		if d.counts[i] < 0 {
			return nil, errors.New("a bucket count went down between the snapshots (did the router restart?)")
		}
	}
	d.count -= start.count
	d.sum -= start.sum
	if d.count < 0 {
		return nil, errors.New("the count went down between the snapshots (did the router restart?)")
	}
	return d, nil
}

// parseHistogram finds the histogram name in a Prometheus text exposition
// and returns its snapshot; nil, nil when the exposition does not have it.
// Several series of the histogram (labels) are summed, as
// sum by (le) does.
func parseHistogram(r io.Reader, name string) (*promHist, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	mf := mfs[name]
	if mf == nil {
		return nil, nil
	}
	if mf.GetType() != dto.MetricType_HISTOGRAM {
		return nil, fmt.Errorf("%s is a %s, not a histogram", name, mf.GetType())
	}
	var out *promHist
	for _, m := range mf.GetMetric() {
		h, err := snapshotOf(m.GetHistogram())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if out == nil {
			out = h
			continue
		}
		if !slices.Equal(out.bounds, h.bounds) {
			return nil, fmt.Errorf("%s: series with different buckets", name)
		}
		for i := range out.counts {
			out.counts[i] += h.counts[i]
		}
		out.count += h.count
		out.sum += h.sum
	}
	return out, nil
}

// snapshotOf converts a parsed histogram, its buckets sorted by upper
// bound and ending with +Inf.
func snapshotOf(h *dto.Histogram) (*promHist, error) {
	if h == nil {
		return nil, errors.New("no histogram data")
	}
	count := float64(h.GetSampleCount())
	if h.SampleCountFloat != nil {
		count = h.GetSampleCountFloat()
	}
	buckets := slices.Clone(h.GetBucket())
	slices.SortFunc(buckets, func(a, b *dto.Bucket) int { return cmp.Compare(a.GetUpperBound(), b.GetUpperBound()) })
	out := &promHist{count: count, sum: h.GetSampleSum()}
	for _, b := range buckets {
		c := float64(b.GetCumulativeCount())
		if b.CumulativeCountFloat != nil {
			c = b.GetCumulativeCountFloat()
		}
		if n := len(out.bounds); n > 0 && out.bounds[n-1] == b.GetUpperBound() {
			return nil, fmt.Errorf("bucket le=%g twice", b.GetUpperBound())
		}
		if n := len(out.counts); n > 0 && c < out.counts[n-1] {
			// As histogram_quantile does with a non-monotonic scrape.
			c = out.counts[n-1]
		}
		out.bounds = append(out.bounds, b.GetUpperBound())
		out.counts = append(out.counts, c)
	}
	if n := len(out.bounds); n == 0 || !math.IsInf(out.bounds[n-1], 1) {
		out.bounds = append(out.bounds, math.Inf(1))
		out.counts = append(out.counts, count)
	}
	return out, nil
}

// scrapeHistogram GETs the router's /metrics (on its base URL, where
// cmd/router serves it unless METRICS_LISTEN moves it) and returns the
// histogram name from it; nil, nil when the router does not export it (an
// older router) or answers 404 for /metrics.
func scrapeHistogram(ctx context.Context, c *http.Client, base, name string) (*promHist, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	u := base + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	// The text format, not protobuf or OpenMetrics.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	defer func() { _, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) }()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	h, err := parseHistogram(io.LimitReader(resp.Body, 64<<20), name)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return h, nil
}

// forwardLatencyOver summarises the forward latency between the snapshots
// start and end of the window; nil, with the reason logged, when the
// router does not export it or a scrape failed (err).
func forwardLatencyOver(start, end *promHist, err error, logf func(string, ...any)) *fwdLatencyMS {
	switch {
	case err != nil:
		logf("router %s: %v; no fwd figures", forwardLatencyMetric, err)
		return nil
	case end == nil && start == nil:
		logf("the router's /metrics has no %s; no fwd figures", forwardLatencyMetric)
		return nil
	case end == nil:
		logf("router %s: gone from /metrics by the end of the window; no fwd figures", forwardLatencyMetric)
		return nil
	}
	d, err := end.sub(start)
	if err != nil {
		logf("router %s: %v; no fwd figures", forwardLatencyMetric, err)
		return nil
	}
	return forwardLatency(d)
}
