package main

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/rtp"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
)

// Scenario is one load shape: P publishers and S subscribers spread
// round-robin over C conversations.
type Scenario struct {
	Publishers  int `json:"publishers"`
	Subscribers int `json:"subscribers"`
	// Slots is the number of receiving slots (audio m-lines) of each
	// subscriber; 0 means as many as there are publishers in its
	// conversation, so that every subscriber hears every publisher.
	Slots int `json:"slots"`
	// PublisherSlots is the number of receiving slots of each publisher
	// (0: publishers only send, like a LiveKit load test's publishers).
	PublisherSlots int `json:"publisher_slots"`
	Conversations  int `json:"conversations"`
	// Routers is the number of routers the devices are spread over
	// (multi-router mode); 0 or 1: one.
	Routers int `json:"routers,omitempty"`
	// ByConversation puts every device of a conversation on one router
	// (conversation c on router c mod R), so that nothing is relayed: the
	// control against which the default spread (device by device,
	// round-robin) shows the relay's cost.
	ByConversation bool `json:"by_conversation,omitempty"`
}

// Name is "PxS" with the slot and conversation counts when they are not
// the defaults.
func (s Scenario) Name() string {
	n := fmt.Sprintf("%dx%d", s.Publishers, s.Subscribers)
	if s.Slots > 0 {
		n += fmt.Sprintf(" K=%d", s.Slots)
	}
	if s.PublisherSlots > 0 {
		n += fmt.Sprintf(" Kp=%d", s.PublisherSlots)
	}
	if s.Conversations > 1 {
		n += fmt.Sprintf(" C=%d", s.Conversations)
	}
	if s.Routers > 1 {
		n += fmt.Sprintf(" R=%d", s.Routers)
		if s.ByConversation {
			n += " by-conv"
		}
	}
	return n
}

// loadConfig is one load run.
type loadConfig struct {
	// URL is the router's base URL (http://127.0.0.1:port).
	URL string
	Scenario
	// Rate is the ramp: connections started per second.
	Rate float64
	// Settle is the wait after the last connection before the window;
	// Hold is the steady window; Grace is how long after the window the
	// subscribers keep reading for packets sent within it.
	Settle, Hold, Grace time.Duration
	// SizeMin and SizeMax bound the Opus payload sizes (uniform).
	SizeMin, SizeMax int
	// Level is the RFC 6464 level publishers send, in -dBov (0 loudest).
	Level int
	// Framing is the /connect framing.
	Framing beepclient.Framing
	// RouterPID is the router's pid for /proc figures; 0: none.
	RouterPID int
	// Others are the other routers of a multi-router run (on the same
	// NATS as URL's): the devices are spread round-robin over URL and them.
	Others []routerRef
	// DebugURL is the harness router's pprof listener; CPUProfile, when
	// set, receives a CPU profile of the steady window from it.
	DebugURL   string
	CPUProfile string
	// ToolProfile, when set, receives a CPU profile of this process (the
	// clients) over the steady window.
	ToolProfile string
	// NACK makes the clients negotiate NACK for Opus, as pion clients do;
	// browsers and libwebrtc do not (their Opus has only transport-cc).
	NACK bool
	// SRTP is the DTLS-SRTP profile the clients offer (srtpProfiles):
	// "" for pion's list (AEAD_AES_256_GCM), "aes-cm" for Chromium's
	// choice.
	SRTP string
	// Wire makes the receiving devices timestamp datagrams in the kernel
	// (beepclient.Options.ArrivalTimes), for the wire latency.
	Wire bool
	// Syscalls counts the router's system calls over the window with
	// perf stat (when perf is there and allowed to).
	Syscalls bool
	// DialTimeout bounds one device's join and connect.
	DialTimeout time.Duration
	// Logf reports progress; nil: quiet.
	Logf func(format string, args ...any)
}

// payloadHeader is what every synthetic Opus payload starts with: the TOC
// byte, the send time (UnixNano, big endian), the publisher's index and its
// packet counter.
const payloadHeader = 1 + 8 + 4 + 4

// window is the steady window, as UnixNano send times: a packet counts when
// it was sent within [start, end).
type window struct{ start, end atomic.Int64 }

// seqTracker extends 16-bit RTP sequence numbers and finds duplicates among
// the last 128.
type seqTracker struct {
	started bool
	highest uint64
	recent  [2]uint64 // bit i: highest-i was seen
}

func (t *seqTracker) update(seq uint16) (ext uint64, dup, late bool) {
	if !t.started {
		t.started = true
		t.highest = 1<<32 + uint64(seq)
		t.recent = [2]uint64{1, 0}
		return t.highest, false, false
	}
	d := int16(seq - uint16(t.highest))
	ext = uint64(int64(t.highest) + int64(d))
	if d > 0 {
		n := uint(d)
		switch {
		case n >= 128:
			t.recent = [2]uint64{}
		case n >= 64:
			t.recent[1], t.recent[0] = t.recent[0]<<(n-64), 0
		default:
			t.recent[1] = t.recent[1]<<n | t.recent[0]>>(64-n)
			t.recent[0] <<= n
		}
		t.recent[0] |= 1
		t.highest = ext
		return ext, false, false
	}
	off := uint64(-int64(d))
	if off >= 128 {
		return ext, false, true
	}
	w, b := off/64, off%64
	if t.recent[w]&(1<<b) != 0 {
		return ext, true, false
	}
	t.recent[w] |= 1 << b
	return ext, false, true
}

// slotStat is what one receiving slot (m-line) saw. Its reading goroutine
// updates it; the run reads it at the end, under mu.
type slotStat struct {
	win *window

	mu          sync.Mutex
	seq         seqTracker
	hist        *hist // latency at the app: read time − send time
	wire        *hist // wire latency: kernel arrival − send time; nil: off
	noWire      uint64
	received    uint64 // unique packets sent within the window
	inWin       bool
	first, last uint64 // extended sequence numbers of those packets
	late, dups  uint64
	switches    uint64 // changes of publisher between consecutive packets
	lastPub     uint32
	havePub     bool
	foreign     uint64 // packets without our payload header
}

// handle counts one packet the slot read at at; arrived is when the
// kernel received it (zero: unknown).
func (s *slotStat) handle(p *rtp.Packet, at, arrived time.Time) {
	pl := p.Payload
	ours := len(pl) >= payloadHeader && (pl[0] == 0xf8 || pl[0] == 0xfc)
	var sent int64
	var pub uint32
	if ours {
		sent = int64(binary.BigEndian.Uint64(pl[1:9]))
		pub = binary.BigEndian.Uint32(pl[9:13])
	}
	w0, w1 := s.win.start.Load(), s.win.end.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	ext, dup, late := s.seq.update(p.SequenceNumber)
	if !ours {
		s.foreign++
		return
	}
	if sent < w0 || sent >= w1 {
		return
	}
	if dup {
		s.dups++
		return
	}
	s.received++
	if late {
		s.late++
	}
	sentAt := time.Unix(0, sent)
	s.hist.add(at.Sub(sentAt))
	if s.wire != nil {
		if arrived.IsZero() {
			s.noWire++
		} else {
			s.wire.add(arrived.Sub(sentAt))
		}
	}
	if !s.inWin {
		s.first, s.last, s.inWin = ext, ext, true
	} else {
		s.first, s.last = min(s.first, ext), max(s.last, ext)
	}
	if s.havePub && pub != s.lastPub {
		s.switches++
	}
	s.lastPub, s.havePub = pub, true
}

// device is one load client.
type device struct {
	idx       int
	user      string
	conv      string
	publisher bool
	pubIdx    uint32
	slots     int
	router    int // index of its router: 0 is loadConfig.URL, then Others

	c          *beepclient.Client
	err        error
	joinDur    time.Duration
	connectDur time.Duration

	mu     sync.Mutex
	tracks []*slotStat

	sentInWin atomic.Uint64
	sendErrs  atomic.Uint64
	skipped   atomic.Uint64
}

// runResult is the report of one load run.
type runResult struct {
	Name      string    `json:"name"`
	Scenario  Scenario  `json:"scenario"`
	Run       int       `json:"run"`
	Started   time.Time `json:"started"`
	LoadAvg   string    `json:"loadavg_at_start"`
	Rate      float64   `json:"rate_per_s"`
	SettleS   float64   `json:"settle_s"`
	HoldS     float64   `json:"hold_s"`
	Payload   [2]int    `json:"payload_bytes"`
	LevelDBov int       `json:"level_dbov"`
	NACK      bool      `json:"nack"`
	SRTP      string    `json:"srtp,omitempty"`

	Devices struct {
		Connected  int    `json:"connected"`
		Failed     int    `json:"failed"`
		FirstError string `json:"first_error,omitempty"`
	} `json:"devices"`
	JoinMS    quantiles `json:"join_ms"`    // POST /join
	ConnectMS quantiles `json:"connect_ms"` // dial /connect → peer connection connected
	// SlowConnects are the devices whose connect took more than twice the
	// median and over 100 ms (at most 10): user, order and time.
	SlowConnects []slowConnect `json:"slow_connects,omitempty"`

	WindowS float64 `json:"window_s"`
	Ingress struct {
		Sent       uint64  `json:"sent"`
		PPS        float64 `json:"pps"`
		SendErrors uint64  `json:"send_errors"`
		Skipped    uint64  `json:"skipped"` // packets the tool fell too far behind to send (whole run)
	} `json:"ingress"`
	Egress struct {
		Received uint64 `json:"received"`
		// ToSubscribers and ToPublishers split Received: copies that
		// subscribers received, and copies that publishers with slots
		// (-publisher-slots) received of the other publishers.
		ToSubscribers    uint64  `json:"to_subscribers"`
		ToPublishers     uint64  `json:"to_publishers"`
		PPS              float64 `json:"pps"`
		ExpectedByFanout float64 `json:"expected_by_fanout"`
		DeliveryPct      float64 `json:"delivery_pct"`
	} `json:"egress"`
	Loss struct {
		Expected       uint64  `json:"expected"`
		Lost           uint64  `json:"lost"`
		Pct            float64 `json:"pct"`
		Late           uint64  `json:"late"`
		Duplicates     uint64  `json:"duplicates"`
		Switches       uint64  `json:"switches"`
		SlotsReceiving int     `json:"slots_receiving"`
		SlotsExpected  int     `json:"slots_expected"`
	} `json:"loss"`
	// Cluster are the figures of a multi-router run (Router then sums
	// its routers); nil with one router.
	Cluster *clusterFigures `json:"cluster,omitempty"`
	// LatencyMS is the latency at the app: the subscriber's read time
	// from its pion track − the send time in the payload.
	LatencyMS latencyMS `json:"latency_ms"`
	// WireLatencyMS is the kernel's receive time of the datagram at the
	// subscriber's socket − the send time in the payload (with -wire).
	WireLatencyMS *wireLatencyMS `json:"wire_latency_ms,omitempty"`
	// RouterForwardMS is the router's own added latency per received RTP
	// packet (kernel receive time at the router's socket → the forwarder's
	// send of the last copy), from the router_forward_latency_seconds
	// histogram of its /metrics, scraped as the steady window starts and
	// as it ends (the packets the router forwarded in between). Null when
	// the router does not export the histogram (an older router) or
	// /metrics could not be read.
	RouterForwardMS *fwdLatencyMS  `json:"router_forward_latency_ms"`
	Router          *routerFigures `json:"router,omitempty"`
	// Processing is the harness router's own time per published packet
	// over the window (pipeline and fan-out to every slot), when the
	// router is the harness (-router-self).
	Processing *quantiles  `json:"router_processing_ms,omitempty"`
	Tool       toolFigures `json:"tool"`
	Machine    struct {
		BusyCores  float64 `json:"busy_cores"`
		OtherCores float64 `json:"other_cores"` // busy minus router minus tool
		CPUs       int     `json:"cpus"`
	} `json:"machine"`
	// UDPDrops are datagrams the kernel dropped on full receive buffers
	// from the start of the window to the end of the grace period: on the
	// router's sockets (ingress it did not read in time) and on the tool's
	// (egress the clients did not read in time: the tool, not the router,
	// was the limit).
	UDPDrops struct {
		Router *uint64 `json:"router,omitempty"`
		Tool   uint64  `json:"tool"`
	} `json:"udp_drops"`
	RouterLog  []string `json:"router_warnings,omitempty"`
	CPUProfile string   `json:"cpu_profile,omitempty"`
	// Floor is the floor's run (-floor) right after this one, with the
	// same clients and shape; VsFloor the router's figures divided by its.
	Floor   *runResult  `json:"floor,omitempty"`
	VsFloor *floorRatio `json:"vs_floor,omitempty"`
}

type latencyMS struct {
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// wireLatencyMS is the wire latency with its sample counts.
type wireLatencyMS struct {
	latencyMS
	// Samples are the received packets with a kernel arrival time;
	// NoWireTime those without one (their arrival was no longer known).
	Samples    uint64 `json:"samples"`
	NoWireTime uint64 `json:"no_wire_time"`
}

// latencyOf summarises h in milliseconds.
func latencyOf(h *hist) latencyMS {
	ms := func(us float64) float64 { return us / 1000 }
	return latencyMS{
		P50: ms(h.quantile(0.50)), P95: ms(h.quantile(0.95)), P99: ms(h.quantile(0.99)),
		Max: ms(h.quantile(1)), Mean: ms(h.mean()),
	}
}

type slowConnect struct {
	User  string  `json:"user"`
	Index int     `json:"index"` // order of connection
	MS    float64 `json:"ms"`
}

// slowConnects lists the slowest connects of devs, beyond twice the median
// and 100 ms.
func slowConnects(devs []*device, median time.Duration) []slowConnect {
	var out []slowConnect
	for _, d := range devs {
		if d.c != nil && d.connectDur > 2*median && d.connectDur > 100*time.Millisecond {
			out = append(out, slowConnect{User: d.user, Index: d.idx, MS: float64(d.connectDur) / 1e6})
		}
	}
	slices.SortFunc(out, func(a, b slowConnect) int { return cmp.Compare(b.MS, a.MS) })
	if len(out) > 10 {
		out = out[:10]
	}
	return out
}

type quantiles struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func durQuantiles(d durations) quantiles {
	ms := func(x time.Duration) float64 { return float64(x) / 1e6 }
	return quantiles{P50: ms(d.quantile(0.5)), P99: ms(d.quantile(0.99)), Max: ms(d.quantile(1))}
}

type routerFigures struct {
	PID               int     `json:"pid"`
	CPUSeconds        float64 `json:"cpu_s"`
	UserSeconds       float64 `json:"user_s"`
	SysSeconds        float64 `json:"sys_s"` // of which in the kernel
	Cores             float64 `json:"cores"`
	USPerEgressPacket float64 `json:"us_per_egress_packet"`
	EgressPPSPerCore  float64 `json:"egress_pps_per_core"`
	RSSStartKiB       int64   `json:"rss_start_kib"`
	RSSPeakKiB        int64   `json:"rss_peak_kib"`
	HWMKiB            int64   `json:"hwm_kib"`
	Threads           int     `json:"threads_peak"`
	CPUs              string  `json:"cpus_allowed"`
	// PerEgress is what the router spent per egress packet in the window.
	PerEgress *perEgress `json:"per_egress_packet,omitempty"`
	// RunQueueWaitPct is the time its threads waited on a run queue, as a
	// share of the window.
	RunQueueWaitPct float64 `json:"run_queue_wait_pct"`
}

// perEgress is the router's cost per egress packet over the steady window.
// Everything the router does in the window counts (ingress, ICE, RTCP).
type perEgress struct {
	CPUUS  float64 `json:"cpu_us"`
	UserUS float64 `json:"user_us"`
	SysUS  float64 `json:"sys_us"`
	// CPUPerSubscriberCopyUS divides the CPU by the copies subscribers
	// received only (publishers hear one another too, with
	// -publisher-slots).
	CPUPerSubscriberCopyUS float64 `json:"cpu_per_subscriber_copy_us"`
	// Syscalls are system calls per egress packet by name, "syscalls"
	// for all of them (perf stat on the router's threads; absent without
	// perf).
	Syscalls         map[string]float64 `json:"syscalls,omitempty"`
	VoluntaryCtxSw   float64            `json:"voluntary_ctxt_switches"`
	InvoluntaryCtxSw float64            `json:"nonvoluntary_ctxt_switches"`
	// RunQueueWaitUS is the time the router's threads were runnable but
	// waited for a CPU (schedstat), per egress packet.
	RunQueueWaitUS float64 `json:"run_queue_wait_us"`
}

// floorRatio is the router's cost per egress packet divided by the
// floor's, measured in the same invocation right after it. A ratio whose
// floor figure is zero or unknown is left out (0).
type floorRatio struct {
	CPU         float64 `json:"cpu"`
	User        float64 `json:"user"`
	Sys         float64 `json:"sys"`
	Syscalls    float64 `json:"syscalls,omitempty"`
	CtxSwitches float64 `json:"ctxt_switches,omitempty"`
}

// ratioTo returns a's per-packet figures over b's.
func ratioTo(a, b *perEgress) *floorRatio {
	if a == nil || b == nil {
		return nil
	}
	div := func(x, y float64) float64 {
		if y <= 0 {
			return 0
		}
		return x / y
	}
	return &floorRatio{
		CPU: div(a.CPUUS, b.CPUUS), User: div(a.UserUS, b.UserUS), Sys: div(a.SysUS, b.SysUS),
		Syscalls:    div(a.Syscalls["syscalls"], b.Syscalls["syscalls"]),
		CtxSwitches: div(a.VoluntaryCtxSw+a.InvoluntaryCtxSw, b.VoluntaryCtxSw+b.InvoluntaryCtxSw),
	}
}

type toolFigures struct {
	CPUSeconds float64 `json:"cpu_s"`
	Cores      float64 `json:"cores"`
	GOMAXPROCS int     `json:"gomaxprocs"`
	CPUs       string  `json:"cpus_allowed"`
}

// wsURL and joinURL derive the endpoints from the base URL.
func wsURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("router URL %q: want http:// or https://", base)
	}
	u.Path = "/connect"
	return u.String(), nil
}

// makeDevices lays out the devices: publishers first, then subscribers,
// round-robin over the conversations.
func makeDevices(cfg *loadConfig, prefix string) []*device {
	var devs []*device
	for i := 0; i < cfg.Publishers; i++ {
		devs = append(devs, &device{
			idx: len(devs), user: fmt.Sprintf("%s-p%d", prefix, i), conv: fmt.Sprintf("%s-c%d", prefix, i%cfg.Conversations),
			publisher: true, pubIdx: uint32(i), slots: cfg.PublisherSlots, router: cfg.routerOf(i),
		})
	}
	pubsIn := make(map[string]int)
	for _, d := range devs {
		pubsIn[d.conv]++
	}
	for i := 0; i < cfg.Subscribers; i++ {
		conv := fmt.Sprintf("%s-c%d", prefix, i%cfg.Conversations)
		k := cfg.Slots
		if k <= 0 {
			k = max(1, pubsIn[conv])
		}
		devs = append(devs, &device{idx: len(devs), user: fmt.Sprintf("%s-s%d", prefix, i), conv: conv, slots: k, router: cfg.routerOf(i)})
	}
	return devs
}

// routerOf returns the router of the i-th publisher or subscriber (in
// conversation i mod C): round-robin, or its conversation's with
// ByConversation.
func (cfg *loadConfig) routerOf(i int) int {
	n := 1 + len(cfg.Others)
	if cfg.ByConversation {
		return i % cfg.Conversations % n
	}
	return i % n
}

// connector joins and connects devices.
type connector struct {
	cfg   *loadConfig
	bases []string // each router's base URL: cfg.URL, then cfg.Others
	ws    []string // and its /connect URL
	httpc *http.Client
	win   *window
}

func newConnector(cfg *loadConfig, win *window) (*connector, error) {
	k := &connector{cfg: cfg, win: win, bases: []string{cfg.URL}}
	for _, o := range cfg.Others {
		k.bases = append(k.bases, o.URL)
	}
	for _, b := range k.bases {
		ws, err := wsURL(b)
		if err != nil {
			return nil, err
		}
		k.ws = append(k.ws, ws)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	k.httpc = &http.Client{Transport: tr, Timeout: cfg.DialTimeout}
	return k, nil
}

func (k *connector) close() { k.httpc.CloseIdleConnections() }

// connect POSTs /join for the device's user, then dials /connect until the
// peer connection is established.
func (k *connector) connect(ctx context.Context, d *device) {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.DialTimeout)
	defer cancel()
	cl := claim.Claim{UserID: d.user, ClientID: d.user + "-dev"}
	t0 := time.Now()
	if err := k.join(ctx, k.bases[d.router], cl, d.conv); err != nil {
		d.err = err
		return
	}
	t1 := time.Now()
	c, err := beepclient.Dial(ctx, beepclient.Options{
		URL: k.ws[d.router], Claim: cl, Framing: k.cfg.Framing,
		Publish: d.publisher, Receive: d.slots, NoNACK: !k.cfg.NACK,
		// Cheaper reading; the slots find duplicates themselves.
		NoReplayProtection: true,
		SRTPProfiles:       srtpProfiles[k.cfg.SRTP],
		ArrivalTimes:       k.cfg.Wire && d.slots > 0,
		OnTrack: func(string) func(*rtp.Packet, time.Time, time.Time) {
			s := &slotStat{win: k.win, hist: newHist()}
			if k.cfg.Wire {
				s.wire = newHist()
			}
			d.mu.Lock()
			d.tracks = append(d.tracks, s)
			d.mu.Unlock()
			return s.handle
		},
	})
	if err != nil {
		d.err = err
		return
	}
	d.c, d.joinDur, d.connectDur = c, t1.Sub(t0), time.Since(t1)
}

func (k *connector) join(ctx context.Context, base string, cl claim.Claim, conv string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/join/"+url.PathEscape(conv), nil)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(cl)
	req.Header.Set(claim.Header, string(b))
	resp, err := k.httpc.Do(req)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("join %s: HTTP %d", conv, resp.StatusCode)
	}
	return nil
}

// ramp connects devs at cfg.Rate per second (at most 128 at once) and
// returns when every attempt has ended. onConnected runs for each device
// that connected.
func (k *connector) ramp(ctx context.Context, devs []*device, onConnected func(*device)) {
	sem := make(chan struct{}, 128)
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, d := range devs {
		if wait := time.Until(start.Add(time.Duration(float64(i) / k.cfg.Rate * float64(time.Second)))); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			d.err = ctx.Err()
			continue
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			d.err = ctx.Err()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			k.connect(ctx, d)
			if d.c != nil && onConnected != nil {
				onConnected(d)
			}
		}()
	}
	wg.Wait()
}

// closeAll closes the clients, 32 at a time.
func closeAll(devs []*device) {
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for _, d := range devs {
		if d.c == nil {
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.c.Close()
			<-sem
		}()
	}
	wg.Wait()
}

// publish sends one packet every 20 ms until stop is closed. It keeps the
// offered rate when it is scheduled late: packets that are due are sent at
// once, as a real client does after a stall; when it falls more than
// 200 ms behind it skips ahead and counts the packets it skipped.
func publish(d *device, cfg *loadConfig, win *window, stop <-chan struct{}) {
	rng := rand.New(rand.NewPCG(uint64(d.idx)+1, 0x5eed))
	buf := make([]byte, cfg.SizeMax)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	toc := byte(0xf8) // config 31 (CELT FB 20 ms), mono, one frame
	if d.pubIdx%2 == 1 {
		toc = 0xfc // the same, stereo
	}
	const frame = 20 * time.Millisecond
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	start := time.Now()
	var n uint32
	for i := int64(0); ; i++ {
		due := start.Add(time.Duration(i) * frame)
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-stop:
				return
			case <-timer.C:
			}
		} else {
			select {
			case <-stop:
				return
			default:
			}
			if behind := -wait; behind > 10*frame {
				skip := int64(behind / frame)
				d.skipped.Add(uint64(skip))
				i += skip - 1
				continue
			}
		}
		p := buf[:cfg.SizeMin+rng.IntN(cfg.SizeMax-cfg.SizeMin+1)]
		p[0] = toc
		now := time.Now().UnixNano()
		binary.BigEndian.PutUint64(p[1:9], uint64(now))
		binary.BigEndian.PutUint32(p[9:13], d.pubIdx)
		binary.BigEndian.PutUint32(p[13:17], n)
		n++
		if err := d.c.Send(p, cfg.Level); err != nil {
			d.sendErrs.Add(1)
		} else if now >= win.start.Load() && now < win.end.Load() {
			d.sentInWin.Add(1)
		}
	}
}

// runLoad runs one load: ramp, settle, steady window, grace; then it
// closes its clients.
func runLoad(ctx context.Context, cfg loadConfig, run int) (*runResult, error) {
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	res := &runResult{
		Name: cfg.Scenario.Name(), Scenario: cfg.Scenario, Run: run, Started: time.Now(), LoadAvg: loadAvg(),
		Rate: cfg.Rate, SettleS: cfg.Settle.Seconds(), HoldS: cfg.Hold.Seconds(),
		Payload: [2]int{cfg.SizeMin, cfg.SizeMax}, LevelDBov: -cfg.Level, NACK: cfg.NACK, SRTP: cfg.SRTP,
	}
	res.Machine.CPUs = machineCPUs()
	if cfg.Wire {
		res.WireLatencyMS = &wireLatencyMS{}
	}
	win := &window{}
	win.start.Store(math.MaxInt64)
	win.end.Store(math.MaxInt64)
	k, err := newConnector(&cfg, win)
	if err != nil {
		return nil, err
	}
	defer k.close()

	prefix := "lt" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36) + "r" + strconv.Itoa(run)
	devs := makeDevices(&cfg, prefix)
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		pubs.Wait()
		closeAll(devs)
	}()
	logf("%s run %d: connecting %d devices at %.0f/s", res.Name, run, len(devs), cfg.Rate)
	k.ramp(ctx, devs, func(d *device) {
		if d.publisher {
			pubs.Add(1)
			go func() {
				defer pubs.Done()
				publish(d, &cfg, win, stop)
			}()
		}
	})
	var joins, connects durations
	for _, d := range devs {
		if d.c == nil {
			res.Devices.Failed++
			if res.Devices.FirstError == "" && d.err != nil {
				res.Devices.FirstError = d.err.Error()
			}
			continue
		}
		res.Devices.Connected++
		joins = append(joins, d.joinDur)
		connects = append(connects, d.connectDur)
	}
	res.JoinMS, res.ConnectMS = durQuantiles(joins), durQuantiles(connects)
	res.SlowConnects = slowConnects(devs, connects.quantile(0.5))
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Devices.Connected == 0 {
		return res, fmt.Errorf("no device connected: %s", res.Devices.FirstError)
	}
	logf("%s run %d: %d connected (%d failed), connect p50 %.1f ms p99 %.1f ms; settling %v", res.Name, run,
		res.Devices.Connected, res.Devices.Failed, res.ConnectMS.P50, res.ConnectMS.P99, cfg.Settle)

	// The window is set before it starts, so every handler sees it whole.
	t0 := time.Now().Add(cfg.Settle)
	t1 := t0.Add(cfg.Hold)
	win.start.Store(t0.UnixNano())
	win.end.Store(t1.UnixNano())
	if !sleepUntil(ctx, t0) {
		return res, ctx.Err()
	}
	// The router's /metrics is scraped outside the /proc samples, so that
	// the scrapes' CPU does not count in the router's figures.
	fwd0, fwdErr0 := scrapeHistogram(ctx, k.httpc, cfg.URL, forwardLatencyMetric)
	multi := newMultiWindow(ctx, k, cfg.Others, logf)
	var perf *perfCounter
	if cfg.Syscalls && cfg.RouterPID > 0 {
		var err error
		if perf, err = startPerf(cfg.RouterPID); err != nil {
			logf("perf: %v (no system call counts)", err)
		}
	}
	r0, rerr := readProc(cfg.RouterPID)
	tk0, tkerr := readTasks(cfg.RouterPID)
	m0, _ := readMachine()
	s0 := selfCPU()
	rd0, rderr := udpDrops(cfg.RouterPID)
	td0, _ := udpDrops(os.Getpid())
	if cfg.DebugURL != "" {
		if _, err := harnessStatsOf(ctx, cfg.DebugURL, "reset=1"); err != nil {
			logf("harness stats: %v", err)
		}
	}
	profDone := make(chan error, 1)
	if cfg.CPUProfile != "" && cfg.DebugURL != "" {
		go func() { profDone <- fetchProfile(ctx, cfg.DebugURL, cfg.CPUProfile, cfg.Hold) }()
	} else {
		profDone <- nil
	}
	if cfg.ToolProfile != "" {
		if f, err := os.Create(cfg.ToolProfile); err != nil {
			logf("tool profile: %v", err)
		} else if err := pprof.StartCPUProfile(f); err != nil {
			logf("tool profile: %v", err)
			f.Close()
		} else {
			defer f.Close()
			defer pprof.StopCPUProfile() // stopped again (a no-op) if the window ends early
			toolProf := time.AfterFunc(time.Until(t1), pprof.StopCPUProfile)
			defer toolProf.Stop()
		}
	}
	peakRSS, peakThreads := r0.RSSKiB, r0.Threads
	tick := time.NewTicker(250 * time.Millisecond)
	for time.Now().Before(t1) && ctx.Err() == nil {
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
		if cfg.RouterPID > 0 {
			if s, err := readProc(cfg.RouterPID); err == nil {
				peakRSS, peakThreads = max(peakRSS, s.RSSKiB), max(peakThreads, s.Threads)
			}
		}
	}
	tick.Stop()
	if !sleepUntil(ctx, t1) {
		return res, ctx.Err()
	}
	r1, rerr1 := readProc(cfg.RouterPID)
	multi.endProc()
	tk1, tkerr1 := readTasks(cfg.RouterPID)
	m1, _ := readMachine()
	var syscalls map[string]uint64
	if perf != nil {
		var err error
		if syscalls, err = perf.stop(); err != nil {
			logf("perf: %v", err)
		}
	}
	s1 := selfCPU()
	multi.endRelay(ctx, k)
	fwd1, fwdErr1 := scrapeHistogram(ctx, k.httpc, cfg.URL, forwardLatencyMetric)
	res.RouterForwardMS = forwardLatencyOver(fwd0, fwd1, errors.Join(fwdErr0, fwdErr1), logf)
	if cfg.DebugURL != "" {
		if st, err := harnessStatsOf(ctx, cfg.DebugURL, "reset=1"); err == nil {
			res.Processing = &quantiles{P50: st.Processing.P50, P99: st.Processing.P99, Max: st.Processing.Max}
		}
	}
	logf("%s run %d: window done; grace %v", res.Name, run, cfg.Grace)
	if !sleepUntil(ctx, t1.Add(cfg.Grace)) {
		return res, ctx.Err()
	}
	if cfg.RouterPID > 0 && cfg.RouterPID != os.Getpid() && rderr == nil {
		if rd1, err := udpDrops(cfg.RouterPID); err == nil {
			d := rd1 - rd0
			res.UDPDrops.Router = &d
		}
	}
	if td1, err := udpDrops(os.Getpid()); err == nil {
		res.UDPDrops.Tool = td1 - td0
	}
	close(stop)
	pubs.Wait()
	if err := <-profDone; err != nil {
		logf("cpu profile: %v", err)
	} else if cfg.CPUProfile != "" && cfg.DebugURL != "" {
		res.CPUProfile = cfg.CPUProfile
	}

	winS := cfg.Hold.Seconds()
	res.WindowS = winS
	aggregate(res, devs)
	res.Ingress.PPS = float64(res.Ingress.Sent) / winS
	res.Egress.PPS = float64(res.Egress.Received) / winS

	toolCPU := s1 - s0
	res.Tool = toolFigures{CPUSeconds: toolCPU.Seconds(), Cores: toolCPU.Seconds() / winS, GOMAXPROCS: runtime.GOMAXPROCS(0), CPUs: cpusAllowed(0)}
	busy := (m1.Busy - m0.Busy).Seconds() / winS
	res.Machine.BusyCores = busy
	other := busy - res.Tool.Cores
	if cfg.RouterPID > 0 && rerr == nil && rerr1 == nil {
		cpu := r1.CPU - r0.CPU
		rf := &routerFigures{
			PID: cfg.RouterPID, CPUSeconds: cpu.Seconds(), SysSeconds: (r1.Sys - r0.Sys).Seconds(), Cores: cpu.Seconds() / winS,
			RSSStartKiB: r0.RSSKiB, RSSPeakKiB: max(peakRSS, r1.RSSKiB), HWMKiB: r1.HWMKiB,
			Threads: max(peakThreads, r1.Threads), CPUs: cpusAllowed(cfg.RouterPID),
		}
		rf.UserSeconds = rf.CPUSeconds - rf.SysSeconds
		if res.Egress.Received > 0 {
			rf.USPerEgressPacket = float64(cpu.Microseconds()) / float64(res.Egress.Received)
			rf.EgressPPSPerCore = 1e6 / rf.USPerEgressPacket
			n := float64(res.Egress.Received)
			pe := &perEgress{CPUUS: rf.USPerEgressPacket, UserUS: rf.UserSeconds * 1e6 / n, SysUS: rf.SysSeconds * 1e6 / n}
			if res.Egress.ToSubscribers > 0 {
				pe.CPUPerSubscriberCopyUS = float64(cpu.Microseconds()) / float64(res.Egress.ToSubscribers)
			}
			if tkerr == nil && tkerr1 == nil {
				d := tk1.sub(tk0)
				pe.VoluntaryCtxSw = float64(d.Voluntary) / n
				pe.InvoluntaryCtxSw = float64(d.Involuntary) / n
				pe.RunQueueWaitUS = float64(d.RunQueueWait.Microseconds()) / n
				rf.RunQueueWaitPct = 100 * d.RunQueueWait.Seconds() / winS
			}
			if len(syscalls) > 0 {
				pe.Syscalls = map[string]float64{}
				for k, v := range syscalls {
					pe.Syscalls[k] = float64(v) / n
				}
			}
			rf.PerEgress = pe
		}
		res.Router = rf
		multi.report(res, devs, cpu, rerr == nil && rerr1 == nil)
		other -= rf.Cores
	}
	res.Machine.OtherCores = math.Max(0, other)
	return res, nil
}

// aggregate fills the packet figures of res from what the devices saw.
func aggregate(res *runResult, devs []*device) {
	total, wire := newHist(), newHist()
	var noWire uint64
	pubsIn := make(map[string][]*device) // conversation → its connected publishers
	for _, d := range devs {
		if d.publisher && d.c != nil {
			pubsIn[d.conv] = append(pubsIn[d.conv], d)
			res.Ingress.Sent += d.sentInWin.Load()
			res.Ingress.SendErrors += d.sendErrs.Load()
			res.Ingress.Skipped += d.skipped.Load()
		}
	}
	for _, d := range devs {
		if d.c == nil || d.slots == 0 {
			continue
		}
		// What the device should receive: every other publisher of its
		// conversation when it has slots for all, else its slots' worth.
		var sum float64
		others := 0
		for _, p := range pubsIn[d.conv] {
			if p != d {
				sum += float64(p.sentInWin.Load())
				others++
			}
		}
		if d.slots >= others {
			res.Egress.ExpectedByFanout += sum
			res.Loss.SlotsExpected += others
		} else {
			res.Egress.ExpectedByFanout += float64(d.slots) * sum / float64(others)
			res.Loss.SlotsExpected += d.slots
		}
		d.mu.Lock()
		tracks := append([]*slotStat(nil), d.tracks...)
		d.mu.Unlock()
		for _, s := range tracks {
			s.mu.Lock()
			if s.inWin {
				res.Loss.SlotsReceiving++
				exp := s.last - s.first + 1
				res.Loss.Expected += exp
				if exp > s.received {
					res.Loss.Lost += exp - s.received
				}
			}
			res.Egress.Received += s.received
			if d.publisher {
				res.Egress.ToPublishers += s.received
			} else {
				res.Egress.ToSubscribers += s.received
			}
			res.Loss.Late += s.late
			res.Loss.Duplicates += s.dups
			res.Loss.Switches += s.switches
			total.merge(s.hist)
			if s.wire != nil {
				wire.merge(s.wire)
				noWire += s.noWire
			}
			s.mu.Unlock()
		}
	}
	if res.Loss.Expected > 0 {
		res.Loss.Pct = 100 * float64(res.Loss.Lost) / float64(res.Loss.Expected)
	}
	if res.Egress.ExpectedByFanout > 0 {
		res.Egress.DeliveryPct = 100 * float64(res.Egress.Received) / res.Egress.ExpectedByFanout
	}
	res.LatencyMS = latencyOf(total)
	if res.WireLatencyMS != nil {
		*res.WireLatencyMS = wireLatencyMS{latencyMS: latencyOf(wire), Samples: wire.n, NoWireTime: noWire}
	}
}

// sleepUntil waits until t or until ctx ends; it reports whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// fetchProfile writes a CPU profile of the next d from the harness's pprof
// listener to path.
func fetchProfile(ctx context.Context, debugURL, path string, d time.Duration) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	return fetchTo(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", debugURL, secs), path, d+30*time.Second)
}

// fetchTo GETs u into path.
func fetchTo(ctx context.Context, u, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// errNoRouterPID explains missing router figures.
var errNoRouterPID = errors.New("no router pid: give -router-pid, or let the tool start the router with -router-bin or -router-self")

// srtpProfiles are the DTLS-SRTP profiles the clients offer, by -srtp.
var srtpProfiles = map[string][]dtls.SRTPProtectionProfile{
	"":       nil, // pion's list: AEAD_AES_256_GCM first
	"aes-cm": {dtls.SRTP_AES128_CM_HMAC_SHA1_80},
	"gcm":    {dtls.SRTP_AEAD_AES_128_GCM},
}
