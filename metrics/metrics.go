// Package metrics exports the router's state and counts to Prometheus and
// serves its health endpoints.
//
// Counts are read at scrape time from the counters the session manager and
// the stages keep anyway, so exporting them adds nothing to the packet path.
package metrics

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// NewRegistry returns a registry with the Go runtime (goroutines, memory)
// and process (CPU, RSS, file descriptors) collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// Sources are what the router collector reads at scrape time.
type Sources struct {
	Rooms    *room.Manager
	Pipeline *pipeline.Pipeline
	// NATSConnected reports whether the NATS connection is up.
	NATSConnected func() bool
}

// Register adds the router's collector to r.
func Register(r prometheus.Registerer, src Sources) error {
	return r.Register(newCollector(src))
}

type collector struct {
	src Sources

	users, convs, peers, direct, tracks, slots                                          *prometheus.Desc
	pktsIn, bytesIn, malformed, dups, pktsOut, bytesOut                                 *prometheus.Desc
	nacks, nacksRefused, refused, plis, keyReqs, twcc, nacksSent, overload, stageEvents *prometheus.Desc
	resent, ingress                                                                     *prometheus.Desc
	natsUp                                                                              *prometheus.Desc
}

func newCollector(src Sources) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("router_"+name, help, labels, nil)
	}
	return &collector{
		src:          src,
		users:        d("users", "Users known: members of a conversation or with a connected device."),
		convs:        d("conversations", "Conversations with at least one member."),
		peers:        d("peers", "Peer connections (devices), connected or connecting."),
		direct:       d("peers_direct_egress", "Connected peers whose slots encrypt and send their packets themselves (EGRESS=direct); the others' go through pion's write path."),
		tracks:       d("tracks", "Audio tracks being published."),
		slots:        d("slots", "Outgoing audio slots of connected peers."),
		pktsIn:       d("rtp_packets_in_total", "RTP packets received from publishers."),
		bytesIn:      d("rtp_bytes_in_total", "RTP bytes received from publishers."),
		malformed:    d("rtp_malformed_total", "Received RTP packets that did not parse."),
		dups:         d("rtp_duplicates_total", "Received RTP packets dropped because their track had forwarded their sequence number already (counted when the track ends)."),
		pktsOut:      d("rtp_packets_out_total", "RTP packets forwarded to receivers' slots."),
		bytesOut:     d("rtp_payload_bytes_out_total", "RTP payload bytes forwarded to receivers' slots."),
		nacks:        d("rtcp_nacks_received_total", "NACKs received from receivers (answered from the packet cache)."),
		resent:       d("rtp_resent_total", "Packets sent again in answer to receivers' NACKs, from the slots' caches (EGRESS=direct)."),
		plis:         d("rtcp_plis_received_total", "PLIs and FIRs received from receivers; for video they become keyframe requests to the publisher."),
		keyReqs:      d("keyframe_requests_total", "PLIs and FIRs sent to publishers of video (at most one per track per keyframe interval)."),
		twcc:         d("rtcp_twcc_sent_total", "Transport-wide congestion control feedback packets sent to publishers of video."),
		nacksRefused: d("rtp_resend_refused_total", "Retransmissions refused to receivers: asked for again within the dedup window, or past the receiver's budget (half its stream's bytes)."),
		refused:      d("refused_total", "What clients asked for and were refused, by what: ICE candidates (forbidden network or past the bound per peer), sends to forbidden networks, tracks past MAX_TRACKS_PER_PEER, peers closed for naming too many SSRCs in their RTP and RTCP (stream), new peers past the ICE sockets' share of the file descriptors (socket_limit).", "what"),
		nacksSent:    d("rtcp_nacks_sent_total", "NACKs sent to publishers for packets lost on the way in."),
		overload:     d("rtp_dropped_overload_total", "Received RTP packets dropped because their track's reader was TRACK_BUFFER_BYTES behind (the router is overloaded)."),
		ingress:      d("rtp_ingress_total", "Received RTP by how the router read it (INGRESS=direct): taken at the socket (direct), left to pion for not authenticating (fallback), dropped as replayed or too old (replay).", "path"),
		stageEvents:  d("stage_events_total", "What each pipeline stage counted: forwarded packets, bites, published bites, and drops by reason (event=drop_*).", "stage", "event"),
		natsUp:       d("nats_connected", "1 while the NATS connection is up."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.users, c.convs, c.peers, c.direct, c.tracks, c.slots, c.pktsIn, c.bytesIn, c.malformed, c.dups, c.pktsOut, c.bytesOut, c.nacks, c.resent, c.plis, c.keyReqs, c.twcc, c.nacksRefused, c.refused, c.nacksSent, c.overload, c.ingress, c.stageEvents, c.natsUp} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v uint64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
	}
	if m := c.src.Rooms; m != nil {
		s := m.Stats()
		gauge(c.users, float64(s.Users))
		gauge(c.convs, float64(s.Conversations))
		gauge(c.peers, float64(s.Peers))
		gauge(c.direct, float64(s.DirectPeers))
		gauge(c.tracks, float64(s.Tracks))
		gauge(c.slots, float64(s.DownTracks))
		counter(c.pktsIn, s.PacketsIn)
		counter(c.bytesIn, s.BytesIn)
		counter(c.malformed, s.Malformed)
		counter(c.dups, s.Duplicates)
		counter(c.pktsOut, s.PacketsOut)
		counter(c.bytesOut, s.BytesOut)
		counter(c.nacks, s.NACKs)
		counter(c.resent, s.Resent)
		counter(c.plis, s.PLIs)
		counter(c.keyReqs, s.KeyframeRequests)
		counter(c.twcc, s.TWCCSent)
		counter(c.nacksRefused, s.NACKsRefused)
		counter(c.refused, s.Refused.Candidates, "candidate")
		counter(c.refused, s.Refused.Sends, "send")
		counter(c.refused, s.Refused.Tracks, "track")
		counter(c.refused, s.Refused.Streams, "stream")
		counter(c.refused, s.Refused.Sockets, "socket_limit")
		counter(c.nacksSent, s.NACKsSent)
		counter(c.overload, s.Overload)
		counter(c.ingress, s.IngressDirect, "direct")
		counter(c.ingress, s.IngressFallback, "fallback")
		counter(c.ingress, s.IngressReplays, "replay")
	}
	if p := c.src.Pipeline; p != nil {
		for stage, events := range p.Stats() {
			for event, v := range events {
				counter(c.stageEvents, v, stage, event)
			}
		}
	}
	if f := c.src.NATSConnected; f != nil {
		v := 0.0
		if f() {
			v = 1
		}
		gauge(c.natsUp, v)
	}
}

// Handler serves /metrics, /healthz and /readyz. /healthz answers 200 while
// the process serves HTTP; /readyz answers 200 only while ready() is nil,
// else 503 with the reason.
func Handler(g prometheus.Gatherer, ready func() error) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Probe runs a check that may block, such as a round trip to NATS, in the
// background and keeps its last result, for a readiness check. /readyz then
// answers at once, however slow the checked peer, and however many requests
// arrive, at most one check runs at a time, at most once per interval. The
// check must bound its own time (a flush with a deadline); a check that
// hangs anyway shows as stale.
type Probe struct {
	check func() error
	every time.Duration
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	mu  sync.Mutex
	err error     // the last check's result
	ok  time.Time // when a check last succeeded
}

// StartProbe runs check once, then every interval in the background, until
// Stop.
func StartProbe(check func() error, every time.Duration) *Probe {
	p := &Probe{check: check, every: every, stop: make(chan struct{}), done: make(chan struct{})}
	p.run()
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.run()
			}
		}
	}()
	return p
}

func (p *Probe) run() {
	err := p.check()
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
	if err == nil {
		p.ok = now
	}
}

// Err returns the last check's error, or an error if no check has succeeded
// for three intervals (the check hangs), or nil.
func (p *Probe) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err != nil {
		return p.err
	}
	if age := time.Since(p.ok); age > 3*p.every {
		return fmt.Errorf("no successful check for %s", age.Round(time.Millisecond))
	}
	return nil
}

// Stop ends the background checks and waits for a running one.
func (p *Probe) Stop() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}
