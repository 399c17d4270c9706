package turn

import "github.com/prometheus/client_golang/prometheus"

// Collector returns the server's Prometheus collector: live allocations,
// allocations made, refusals by reason and relayed bytes. The counts are
// read at scrape time.
func (s *Server) Collector() prometheus.Collector { return &collector{s: s, d: newDescs()} }

type descs struct {
	live, made, refused, bytes *prometheus.Desc
}

func newDescs() descs {
	return descs{
		live: prometheus.NewDesc("router_turn_allocations", "Live allocations of the built-in TURN server.", nil, nil),
		made: prometheus.NewDesc("router_turn_allocations_total", "Allocations the built-in TURN server made.", nil, nil),
		refused: prometheus.NewDesc("router_turn_refused_total",
			"What the built-in TURN server refused, by reason: auth (malformed username), expired (credential past its expiry), quota_user and quota_total (allocation bounds), forbidden_peer (a permission or channel to a forbidden network), forbidden_send (a relay datagram to one). A wrong password is refused by pion and not counted here.",
			[]string{"reason"}, nil),
		bytes: prometheus.NewDesc("router_turn_relayed_bytes_total", "Bytes the relays exchanged with peers: in (from peers) and out (to peers).", []string{"direction"}, nil),
	}
}

type collector struct {
	s *Server
	d descs
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.d.live
	ch <- c.d.made
	ch <- c.d.refused
	ch <- c.d.bytes
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := &c.s.stats
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	ch <- prometheus.MustNewConstMetric(c.d.live, prometheus.GaugeValue, float64(c.s.Allocations()))
	counter(c.d.made, st.allocations.Load())
	counter(c.d.refused, st.refusedAuth.Load(), "auth")
	counter(c.d.refused, st.refusedExpired.Load(), "expired")
	counter(c.d.refused, st.refusedQuotaUser.Load(), "quota_user")
	counter(c.d.refused, st.refusedQuotaTotal.Load(), "quota_total")
	counter(c.d.refused, st.refusedForbidden.Load(), "forbidden_peer")
	counter(c.d.refused, st.refusedForbiddenTx.Load(), "forbidden_send")
	counter(c.d.bytes, st.bytesIn.Load(), "in")
	counter(c.d.bytes, st.bytesOut.Load(), "out")
}
