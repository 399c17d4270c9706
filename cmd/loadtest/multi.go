package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Multi-router mode (-routers R with -router-bin): R router processes on
// one NATS server with JetStream that the tool runs in-process on
// 127.0.0.1, so that they serve every conversation together (the router's
// cluster package); the publishers and the subscribers are each spread
// round-robin over the routers. The report gives each router's CPU per
// egress packet and its relayed packets, and, against a one-router run of
// the same scenario in the same invocation (-routers 1,R), the CPU the
// relay added per relayed packet.

// maxRouters bounds -routers.
const maxRouters = 8

// routerRef is one router of a run: its base URL and pid (0: unknown).
type routerRef struct {
	URL string
	PID int
}

// routerShare is one router's part of a multi-router run's steady window.
type routerShare struct {
	Index int `json:"index"`
	PID   int `json:"pid"`
	// Cores is the router's CPU over the window; EgressPPS, the packets
	// its subscribers received per second; USPerEgressPacket, its CPU per
	// such packet (relay work included).
	Cores             float64 `json:"cores"`
	EgressPPS         float64 `json:"egress_pps"`
	USPerEgressPacket float64 `json:"us_per_egress_packet"`
	// RelayedOutPPS and RelayedInPPS are the relay frames it published for
	// the other routers and received from them, per second
	// (router_relay_packets_total).
	RelayedOutPPS float64 `json:"relayed_out_pps"`
	RelayedInPPS  float64 `json:"relayed_in_pps"`
	// RelayMessagesOutPS and RelayMessagesInPS are the NATS messages those
	// frames travelled in, per second (router_relay_nats_messages_total; 0
	// from a router without relay batches).
	RelayMessagesOutPS float64 `json:"relay_messages_out_ps,omitempty"`
	RelayMessagesInPS  float64 `json:"relay_messages_in_ps,omitempty"`
}

// clusterFigures are a multi-router run's own figures.
type clusterFigures struct {
	Routers []routerShare `json:"routers"`
	// RelayedOutPPS and RelayedInPPS sum the routers'.
	RelayedOutPPS float64 `json:"relayed_out_pps"`
	RelayedInPPS  float64 `json:"relayed_in_pps"`
	// RelayUSPerPacket is the CPU the relay added per relayed packet
	// received (publishing and receiving it, both ends together): the
	// routers' CPU over that of the control run of the same scenario in
	// the same invocation (its best run), divided by the relayed packets
	// received; nil without a control run. The control is the run with
	// the same routers and every conversation on one router
	// (-spread conversations or both: nothing relayed), or else the one-router run (which
	// then also counts what splitting the devices over processes costs).
	RelayUSPerPacket *float64 `json:"relay_us_per_packet,omitempty"`
	// VsRun is that control run (index into the report's runs).
	VsRun *int `json:"vs_run,omitempty"`
}

// parseRouters parses -routers: a comma list of router counts.
func parseRouters(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > maxRouters {
			return nil, fmt.Errorf("-routers %q: want a comma list of router counts from 1 to %d", s, maxRouters)
		}
		out = append(out, n)
	}
	return out, nil
}

// clusterNATS is the NATS server with JetStream the routers of a
// multi-router run share, in this process, on a loopback port.
type clusterNATS struct {
	s   *server.Server
	dir string
}

func startClusterNATS() (*clusterNATS, error) {
	dir, err := os.MkdirTemp("", "loadtest-nats-")
	if err != nil {
		return nil, err
	}
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true, JetStream: true, StoreDir: dir})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("NATS for the routers: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("NATS for the routers: not ready in 10s")
	}
	return &clusterNATS{s: s, dir: dir}, nil
}

func (n *clusterNATS) URL() string { return n.s.ClientURL() }

func (n *clusterNATS) close() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
	_ = os.RemoveAll(n.dir)
}

// relayCount is a router's relay counters: the frames it published (out)
// and received (in), router_relay_packets_total, and the NATS messages
// they travelled in, router_relay_nats_messages_total (0 if it has none).
type relayCount struct {
	out, in, msgOut, msgIn float64
}

// relayCounts reads the relay counters of the router at base.
func relayCounts(ctx context.Context, c *http.Client, base string) (relayCount, error) {
	var rc relayCount
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return rc, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return rc, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return rc, fmt.Errorf("%s/metrics: HTTP %d", base, resp.StatusCode)
	}
	found := false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		out, in := &rc.out, &rc.in
		rest, ok := strings.CutPrefix(l, `router_relay_packets_total{direction="`)
		if !ok {
			if rest, ok = strings.CutPrefix(l, `router_relay_nats_messages_total{direction="`); !ok {
				continue
			}
			out, in = &rc.msgOut, &rc.msgIn
		} else {
			found = true
		}
		dir, val, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			return rc, fmt.Errorf("%s/metrics: %q", base, l)
		}
		switch dir {
		case "out":
			*out = v
		case "in":
			*in = v
		}
	}
	if err := sc.Err(); err != nil {
		return rc, err
	}
	if !found {
		return rc, fmt.Errorf("%s/metrics: no router_relay_packets_total (is the router's cluster on?)", base)
	}
	return rc, nil
}

// relayCosts fills each multi-router run's RelayUSPerPacket against the
// best control run of its scenario: the same routers with every
// conversation on one router, or else one router.
func relayCosts(runs []*runResult, best []int) {
	bestOf := map[string]int{}
	for _, i := range best {
		if runs[i].Router != nil {
			bestOf[runs[i].Name] = i
		}
	}
	for _, r := range runs {
		cl := r.Cluster
		if cl == nil || r.Router == nil || cl.RelayedInPPS <= 0 || r.Scenario.ByConversation {
			continue
		}
		sc := r.Scenario
		sc.ByConversation = true
		j, ok := bestOf[sc.Name()]
		if !ok {
			sc.ByConversation, sc.Routers = false, 1
			if j, ok = bestOf[sc.Name()]; !ok {
				continue
			}
		}
		us := (r.Router.Cores - runs[j].Router.Cores) * 1e6 / cl.RelayedInPPS
		cl.RelayUSPerPacket, cl.VsRun = &us, &j
	}
}

// printCluster prints the per-router lines of the multi-router runs.
func printCluster(w io.Writer, runs []*runResult) {
	for _, r := range runs {
		cl := r.Cluster
		if cl == nil {
			continue
		}
		var parts []string
		for _, s := range cl.Routers {
			p := fmt.Sprintf("router %d: %.2f cores, %.0f egress pkt/s, %.2f µs/egress pkt, relayed out %.0f/s in %.0f/s",
				s.Index+1, s.Cores, s.EgressPPS, s.USPerEgressPacket, s.RelayedOutPPS, s.RelayedInPPS)
			if s.RelayMessagesOutPS > 0 || s.RelayMessagesInPS > 0 {
				p += fmt.Sprintf(" in NATS messages out %.0f/s in %.0f/s", s.RelayMessagesOutPS, s.RelayMessagesInPS)
			}
			parts = append(parts, p)
		}
		fmt.Fprintf(w, "%s run %d: %s\n", r.Name, r.Run, strings.Join(parts, "; "))
		if cl.RelayUSPerPacket != nil {
			fmt.Fprintf(w, "%s run %d: the relay added %.2f µs of router CPU per relayed packet received (both ends), against %s run %d (%.2f cores there, %.2f here)\n",
				r.Name, r.Run, *cl.RelayUSPerPacket, runs[*cl.VsRun].Name, runs[*cl.VsRun].Run, runs[*cl.VsRun].Router.Cores, r.Router.Cores)
		}
	}
}

// multiWindow measures the routers of a multi-router run over the steady
// window, beside the first router's figures that runLoad takes itself:
// the other routers' CPU from /proc and every router's relay counters from
// /metrics (scraped outside the /proc samples). A nil multiWindow (one
// router) does nothing.
type multiWindow struct {
	others   []routerRef
	logf     func(string, ...any)
	r0, r1   []relayCount // relay counters at the start and the end, per router
	relayErr error
	p0, p1   []procSample
	procErr  error
}

func newMultiWindow(ctx context.Context, k *connector, others []routerRef, logf func(string, ...any)) *multiWindow {
	if len(others) == 0 {
		return nil
	}
	m := &multiWindow{others: others, logf: logf}
	m.r0, m.relayErr = scrapeRelays(ctx, k)
	for _, o := range others {
		s, err := readProc(o.PID)
		if err != nil && m.procErr == nil {
			m.procErr = err
		}
		m.p0 = append(m.p0, s)
	}
	return m
}

// scrapeRelays reads every router's relay counters.
func scrapeRelays(ctx context.Context, k *connector) (rcs []relayCount, err error) {
	for _, b := range k.bases {
		rc, e := relayCounts(ctx, k.httpc, b)
		if e != nil && err == nil {
			err = e
		}
		rcs = append(rcs, rc)
	}
	return rcs, err
}

// endProc samples the other routers' /proc at the end of the window.
func (m *multiWindow) endProc() {
	if m == nil {
		return
	}
	for _, o := range m.others {
		s, err := readProc(o.PID)
		if err != nil && m.procErr == nil {
			m.procErr = err
		}
		m.p1 = append(m.p1, s)
	}
}

// endRelay reads the relay counters at the end of the window.
func (m *multiWindow) endRelay(ctx context.Context, k *connector) {
	if m == nil {
		return
	}
	var err error
	m.r1, err = scrapeRelays(ctx, k)
	if m.relayErr == nil {
		m.relayErr = err
	}
}

// report fills res.Cluster and makes res.Router the routers' sums (CPU,
// cores, CPU per egress packet; RSS and threads stay the first router's).
// cpu0 is the first router's CPU over the window.
func (m *multiWindow) report(res *runResult, devs []*device, cpu0 time.Duration, ok bool) {
	if m == nil || !ok {
		return
	}
	if m.procErr != nil {
		m.logf("multi-router figures: /proc: %v", m.procErr)
		return
	}
	if m.relayErr != nil {
		m.logf("multi-router figures: %v", m.relayErr)
	}
	n := 1 + len(m.others)
	egress := make([]uint64, n)
	for _, d := range devs {
		if d.c == nil {
			continue
		}
		d.mu.Lock()
		tracks := append([]*slotStat(nil), d.tracks...)
		d.mu.Unlock()
		for _, s := range tracks {
			s.mu.Lock()
			egress[d.router] += s.received
			s.mu.Unlock()
		}
	}
	winS := res.WindowS
	cl := &clusterFigures{}
	total := time.Duration(0)
	rf := res.Router
	for i := range n {
		cpu, pid := cpu0, rf.PID
		if i > 0 {
			cpu, pid = m.p1[i-1].CPU-m.p0[i-1].CPU, m.others[i-1].PID
			rf.SysSeconds += (m.p1[i-1].Sys - m.p0[i-1].Sys).Seconds()
		}
		total += cpu
		s := routerShare{Index: i, PID: pid, Cores: cpu.Seconds() / winS, EgressPPS: float64(egress[i]) / winS}
		if egress[i] > 0 {
			s.USPerEgressPacket = float64(cpu.Microseconds()) / float64(egress[i])
		}
		if m.relayErr == nil {
			r0, r1 := m.r0[i], m.r1[i]
			s.RelayedOutPPS, s.RelayedInPPS = (r1.out-r0.out)/winS, (r1.in-r0.in)/winS
			s.RelayMessagesOutPS, s.RelayMessagesInPS = (r1.msgOut-r0.msgOut)/winS, (r1.msgIn-r0.msgIn)/winS
			cl.RelayedOutPPS += s.RelayedOutPPS
			cl.RelayedInPPS += s.RelayedInPPS
		}
		cl.Routers = append(cl.Routers, s)
	}
	rf.CPUSeconds = total.Seconds()
	rf.Cores = total.Seconds() / winS
	if res.Egress.Received > 0 {
		rf.USPerEgressPacket = float64(total.Microseconds()) / float64(res.Egress.Received)
		rf.EgressPPSPerCore = 1e6 / rf.USPerEgressPacket
	}
	res.Cluster = cl
}
