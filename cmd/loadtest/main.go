// Command loadtest is a load generator for the Beep media router. It
// connects P publishers and S subscribers (each with K receiving slots),
// spread over C conversations, the way Beep's clients do (X-User-Claim,
// POST /join, /connect), publishes 20 ms Opus packets with the RFC 6464
// audio level, and reports egress packets/s, loss, one-way latency, join
// times and the router's CPU and memory (from /proc). -idle N measures
// memory per connected idle device instead.
//
// One-way latency is reported twice: at the app (the subscriber's read
// from its pion track − the send time in the payload) and on the wire (the
// kernel's receive time of the datagram at the subscriber's socket, from
// SO_TIMESTAMPNS, − the send time), which leaves out the subscriber's own
// scheduling and pion receive path. A third figure, fwd, is the router's
// own added latency, from the router_forward_latency_seconds histogram of
// its /metrics over the steady window (when the router exports it).
//
// -floor runs the same load again against the floor (floor.go), a minimal
// SFU pinned like the router, right after each run, and reports the
// router's cost per egress packet (CPU, user and system time, system calls
// from perf, context switches and run-queue wait over all its threads) as
// ratios to the floor's: absolute figures drift on a shared host, ratios
// measured in the same run do not.
//
// All traffic stays on loopback: a router URL whose host is not a loopback
// address is refused unless -allow-remote is given, a router the tool
// starts gathers on 127.0.0.1 only, and the clients gather on 127.0.0.1
// only. Every run is bounded (-timeout) and stops by itself.
//
// See docs/performance.md for the method and measured figures.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/beepvoice/router/internal/beepclient"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// Limits that keep a run bounded.
const (
	maxDevices = 4000
	maxHold    = 10 * time.Minute
	maxRuns    = 10
)

// options are the parsed flags.
type options struct {
	url         string
	allowRemote bool
	routerBin   string
	routerSelf  bool
	routerPID   int
	routerCPUs  string
	routerEnv   multiFlag
	permissions string
	routerLog   string

	scenario Scenario
	matrix   string
	rate     float64
	settle   time.Duration
	hold     time.Duration
	grace    time.Duration
	sizeMin  int
	sizeMax  int
	level    int
	framing  string
	runs     int
	routers  string
	spread   string
	timeout  time.Duration
	dialTO   time.Duration

	idle       int
	idleWarmup int

	jsonPath   string
	cpuProfile string
	heapProf   string
	toolProf   string
	nack       bool
	srtp       string
	wire       bool
	verbose    bool

	floor    bool
	syscalls bool

	serveRouter bool
	serveFloor  bool
	udpPort     int
	memRate     int
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.url, "url", "", "router base URL, e.g. http://127.0.0.1:8080 (not with -router-bin/-router-self, which start their own)")
	fs.BoolVar(&o.allowRemote, "allow-remote", false, "allow a router URL whose host is not a loopback address (traffic then leaves loopback)")
	fs.StringVar(&o.routerBin, "router-bin", "", "start this cmd/router binary for each run (LISTEN=127.0.0.1:0, ICE_IPS=127.0.0.1, NATS=embedded) and measure it")
	fs.BoolVar(&o.routerSelf, "router-self", false, "start this tool's in-process router harness (the router's packages wired as cmd/router does, plus pprof) for each run")
	fs.IntVar(&o.routerPID, "router-pid", 0, "pid of an already running router (with -url), for its CPU and memory figures")
	fs.StringVar(&o.routerCPUs, "router-cpus", "", "pin a started router to these CPUs (taskset -c list, e.g. 0)")
	fs.Var(&o.routerEnv, "router-env", "extra KEY=value setting for a started router (repeatable; e.g. UDP_PORT=50000)")
	fs.StringVar(&o.permissions, "permissions", "allow-all", "a started router's permissions: allow-all, or standin (a local backend-permissions stand-in that allows everything)")
	fs.StringVar(&o.routerLog, "router-log", "", "append a started router's log to this file")

	fs.IntVar(&o.scenario.Publishers, "publishers", 2, "publishers (P)")
	fs.IntVar(&o.scenario.Subscribers, "subscribers", 2, "subscribers (S)")
	fs.IntVar(&o.scenario.Slots, "slots", 0, "receiving slots per subscriber (K); 0: one per publisher of its conversation")
	fs.IntVar(&o.scenario.PublisherSlots, "publisher-slots", 0, "receiving slots per publisher (0: publishers only send)")
	fs.IntVar(&o.scenario.Conversations, "conversations", 1, "conversations (C); devices are spread round-robin")
	fs.StringVar(&o.matrix, "matrix", "", "comma list of PxS scenarios run in turn (e.g. 5x20,5x50,10x50,10x100), overriding -publishers and -subscribers")
	fs.Float64Var(&o.rate, "rate", 50, "ramp: connections started per second")
	fs.DurationVar(&o.settle, "settle", 2*time.Second, "wait after the ramp before the steady window")
	fs.DurationVar(&o.hold, "hold", 10*time.Second, "steady window (idle mode: the window in which the router's CPU is measured)")
	fs.DurationVar(&o.grace, "grace", time.Second, "after the window, how long packets sent within it may still arrive")
	fs.IntVar(&o.sizeMin, "size-min", 60, "smallest Opus payload in bytes (at least 17)")
	fs.IntVar(&o.sizeMax, "size-max", 120, "largest Opus payload in bytes")
	fs.IntVar(&o.level, "level", 20, "audio level publishers send, in -dBov (0 loudest, 127 silence; the forwarder counts -50 dBov or louder as speech)")
	fs.StringVar(&o.framing, "framing", "bare", "/connect framing: bare or prefixed")
	fs.StringVar(&o.srtp, "srtp", "", "DTLS-SRTP profile the clients offer: empty for pion's list (AEAD_AES_256_GCM), aes-cm (AES_CM_128_HMAC_SHA1_80, what Chromium negotiates) or gcm (AEAD_AES_128_GCM)")
	fs.StringVar(&o.routers, "routers", "1", "multi-router mode, with -router-bin: spread the publishers and the subscribers round-robin over this many router processes on one NATS (with JetStream, run by the tool on 127.0.0.1); a comma list (e.g. 1,3) runs each scenario with each count, and a multi-router run then reports what the relay cost per relayed packet against the one-router run")
	fs.StringVar(&o.spread, "spread", "devices", "multi-router mode: how devices are spread over the routers: devices (round-robin, device by device: a conversation spans the routers), conversations (conversation c on router c mod R: nothing relayed), or both (each scenario both ways; the relay's cost is then set against the conversations run)")
	fs.IntVar(&o.runs, "runs", 1, "runs per scenario (each with a fresh router when the tool starts it); the table marks the best")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "hard bound on the whole invocation")
	fs.DurationVar(&o.dialTO, "dial-timeout", 30*time.Second, "bound on one device's join and connect")

	fs.IntVar(&o.idle, "idle", 0, "memory mode: connect this many idle devices (K = -slots, at least 1) and report router RSS per device")
	fs.IntVar(&o.idleWarmup, "idle-warmup", 10, "idle mode: devices connected before the baseline")

	fs.StringVar(&o.jsonPath, "json", "", "write the report as JSON to this file")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "with -router-self: write the router's CPU profile of each steady window here (suffixed per scenario and run when there are several)")
	fs.StringVar(&o.heapProf, "heapprofile", "", "with -router-self and -idle: write the router's heap profile after the idle devices here (the baseline to FILE.before, its goroutines to FILE.goroutines)")
	fs.StringVar(&o.toolProf, "tool-cpuprofile", "", "write this tool's own CPU profile (the clients) of the steady window here (last run)")
	fs.BoolVar(&o.nack, "nack", false, "clients negotiate NACK for Opus, as pion clients do; default off, as browsers and libwebrtc offer only transport-cc for Opus")
	fs.BoolVar(&o.wire, "wire", true, "receiving clients timestamp datagrams in the kernel (SO_TIMESTAMPNS, on a UDP socket of their own through pion's ICE UDP mux, which adds one goroutine hand-off to their receive path) for the wire latency")
	fs.BoolVar(&o.verbose, "v", false, "log progress to stderr")
	fs.BoolVar(&o.floor, "floor", false, "after each run, run the same load against the floor (this tool's minimal SFU: one socket, recvmmsg + decrypt, header rewrite + AES-GCM + one sendmmsg per packet; pinned like the router) and report the router's figures as ratios to it")
	fs.BoolVar(&o.syscalls, "syscalls", true, "count the router's system calls over the window with perf stat, when perf is installed and allowed")

	fs.BoolVar(&o.serveRouter, "serve-router", false, "run as the in-process router harness (used by -router-self)")
	fs.BoolVar(&o.serveFloor, "serve-floor", false, "run as the floor (used by -floor)")
	fs.IntVar(&o.udpPort, "udp-port", 0, "with -serve-router: one UDP port for all ICE traffic (0: an ephemeral one, shared by all peers)")
	fs.IntVar(&o.memRate, "memprofilerate", 0, "with -serve-router: runtime.MemProfileRate (0: Go's default, one sample per 512 KiB)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return o, nil
}

// checkURL refuses a router URL that would take traffic off loopback.
func checkURL(raw string, allowRemote bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("-url %q: want http:// or https://", raw)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("-url %q: no host", raw)
	}
	if u.Path != "" && u.Path != "/" {
		return fmt.Errorf("-url %q: give the base URL without a path", raw)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-url %q: host %s is not a loopback address; load runs stay on 127.0.0.1 (give -allow-remote to override)", raw, host)
}

func (o *options) validate() error {
	var errs []error
	starters := 0
	for _, b := range []bool{o.routerBin != "", o.routerSelf, o.url != ""} {
		if b {
			starters++
		}
	}
	if starters != 1 {
		errs = append(errs, errors.New("give exactly one of -url, -router-bin, -router-self"))
	}
	if o.url != "" {
		if err := checkURL(o.url, o.allowRemote); err != nil {
			errs = append(errs, err)
		}
		o.url = strings.TrimRight(o.url, "/")
	} else if o.routerPID != 0 {
		errs = append(errs, errors.New("-router-pid goes with -url; a started router's pid is known"))
	}
	if o.routerCPUs != "" && o.url != "" {
		errs = append(errs, errors.New("-router-cpus pins a router the tool starts"))
	}
	if o.permissions != "allow-all" && o.permissions != "standin" {
		errs = append(errs, errors.New("-permissions: want allow-all or standin"))
	}
	if o.floor && (o.url != "" || o.framing != "bare" || o.idle > 0) {
		errs = append(errs, errors.New("-floor needs a router the tool starts (-router-bin or -router-self), -framing bare, and a load run (not -idle)"))
	}
	if o.cpuProfile != "" && !o.routerSelf {
		errs = append(errs, errors.New("-cpuprofile needs -router-self (cmd/router has no pprof listener)"))
	}
	if o.heapProf != "" && (!o.routerSelf || o.idle == 0) {
		errs = append(errs, errors.New("-heapprofile needs -router-self and -idle"))
	}
	s := o.scenario
	if s.Publishers < 0 || s.Subscribers < 0 || s.Conversations < 1 || s.Slots < 0 || s.PublisherSlots < 0 {
		errs = append(errs, errors.New("counts must not be negative, and -conversations at least 1"))
	}
	if s.Slots > 16 || s.PublisherSlots > 15 {
		errs = append(errs, errors.New("-slots at most 16 and -publisher-slots at most 15 (the router's MAX_SLOTS default)"))
	}
	if o.rate <= 0 || o.rate > 1000 {
		errs = append(errs, errors.New("-rate: want 0 < rate ≤ 1000"))
	}
	if o.hold <= 0 || o.hold > maxHold || o.settle < 0 || o.grace < 0 || o.grace > time.Minute {
		errs = append(errs, fmt.Errorf("-hold: want 0 < hold ≤ %v; -settle ≥ 0; 0 ≤ -grace ≤ 1m", maxHold))
	}
	if o.sizeMin < payloadHeader || o.sizeMax < o.sizeMin || o.sizeMax > 1200 {
		errs = append(errs, fmt.Errorf("-size-min/-size-max: want %d ≤ min ≤ max ≤ 1200", payloadHeader))
	}
	if o.level < 0 || o.level > 127 {
		errs = append(errs, errors.New("-level: want 0..127"))
	}
	if o.framing != "bare" && o.framing != "prefixed" {
		errs = append(errs, errors.New("-framing: want bare or prefixed"))
	}
	if _, ok := srtpProfiles[o.srtp]; !ok {
		errs = append(errs, fmt.Errorf("-srtp %q: want aes-cm, gcm, or nothing for pion's list", o.srtp))
	}
	if rs, err := parseRouters(o.routers); err != nil {
		errs = append(errs, err)
	} else if slices.Max(rs) > 1 && (o.routerBin == "" || o.idle > 0) {
		errs = append(errs, errors.New("-routers above 1 needs -router-bin (the tool starts the routers and their NATS) and a load run (not -idle)"))
	}
	if o.spread != "devices" && o.spread != "conversations" && o.spread != "both" {
		errs = append(errs, errors.New("-spread: want devices, conversations or both"))
	}
	if o.runs < 1 || o.runs > maxRuns {
		errs = append(errs, fmt.Errorf("-runs: want 1..%d", maxRuns))
	}
	if o.timeout <= 0 || o.timeout > time.Hour {
		errs = append(errs, errors.New("-timeout: want 0 < timeout ≤ 1h"))
	}
	if o.idle < 0 || o.idle > maxDevices || o.idleWarmup < 0 {
		errs = append(errs, fmt.Errorf("-idle: want 0..%d", maxDevices))
	}
	return errors.Join(errs...)
}

// scenarios returns the scenarios to run, each with each router count of
// -routers.
func (o *options) scenarios() ([]Scenario, error) {
	base, err := o.baseScenarios()
	if err != nil {
		return nil, err
	}
	rs, err := parseRouters(o.routers)
	if err != nil {
		return nil, err
	}
	var out []Scenario
	for _, sc := range base {
		for _, r := range rs {
			sc.Routers = r
			if r > 1 && o.spread != "devices" {
				sc.ByConversation = true
				out = append(out, sc)
				sc.ByConversation = false
			}
			if r == 1 || o.spread != "conversations" {
				out = append(out, sc)
			}
		}
	}
	return out, nil
}

// baseScenarios returns the scenarios of -publishers and -subscribers, or
// of -matrix.
func (o *options) baseScenarios() ([]Scenario, error) {
	if o.matrix == "" {
		if o.scenario.Publishers+o.scenario.Subscribers == 0 {
			return nil, errors.New("nothing to run: no publishers and no subscribers")
		}
		if o.scenario.Publishers+o.scenario.Subscribers > maxDevices {
			return nil, fmt.Errorf("at most %d devices per run", maxDevices)
		}
		return []Scenario{o.scenario}, nil
	}
	var out []Scenario
	for _, f := range strings.Split(o.matrix, ",") {
		p, s, ok := strings.Cut(strings.TrimSpace(f), "x")
		pn, err1 := strconv.Atoi(p)
		sn, err2 := strconv.Atoi(s)
		if !ok || err1 != nil || err2 != nil || pn < 0 || sn < 0 || pn+sn == 0 || pn+sn > maxDevices {
			return nil, fmt.Errorf("-matrix %q: want PxS with 0 < P+S ≤ %d", f, maxDevices)
		}
		sc := o.scenario
		sc.Publishers, sc.Subscribers = pn, sn
		out = append(out, sc)
	}
	return out, nil
}

// report is the JSON document.
type report struct {
	Command  []string     `json:"command"`
	Host     hostInfo     `json:"host"`
	Router   string       `json:"router"`
	Runs     []*runResult `json:"runs,omitempty"`
	Best     []int        `json:"best,omitempty"` // index into runs of each scenario's best run
	Idle     *idleResult  `json:"idle,omitempty"`
	Finished time.Time    `json:"finished"`
}

type hostInfo struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	ToolCPUs   string `json:"tool_cpus_allowed"`
	LoadAvg    string `json:"loadavg_at_start"`
	GoVersion  string `json:"go_version"`
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.serveRouter {
		if o.memRate > 0 {
			runtime.MemProfileRate = o.memRate
		}
		return serveRouter(o.udpPort)
	}
	if o.serveFloor {
		return serveFloor()
	}
	if err := o.validate(); err != nil {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 2
	}
	scenarios, err := o.scenarios()
	if err != nil && o.idle == 0 {
		fmt.Fprintf(stderr, "loadtest: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	logf := func(string, ...any) {}
	if o.verbose {
		logf = func(f string, a ...any) { fmt.Fprintf(stderr, time.Now().Format("15:04:05.000 ")+f+"\n", a...) }
	}
	rep := &report{
		Command: append([]string{"loadtest"}, args...),
		Host:    hostInfo{CPUs: machineCPUs(), GOMAXPROCS: runtime.GOMAXPROCS(0), ToolCPUs: cpusAllowed(0), LoadAvg: loadAvg(), GoVersion: runtime.Version()},
	}
	switch {
	case o.routerBin != "":
		rep.Router = "subprocess " + o.routerBin
	case o.routerSelf:
		rep.Router = "subprocess harness (loadtest -serve-router)"
	default:
		rep.Router = o.url
	}
	var logW io.Writer
	if o.routerLog != "" {
		f, err := os.OpenFile(o.routerLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintf(stderr, "loadtest: %v\n", err)
			return 1
		}
		defer f.Close()
		logW = f
	}

	// withRouter runs f against the router: a fresh subprocess, or -url.
	// withFloor runs f against a fresh floor, pinned as the router is.
	withFloor := func(f func(url string, pid int) error) ([]string, error) {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		r, err := startRouter(ctx, routerSpec{Bin: exe, Args: []string{"-serve-floor"}, CPUs: o.routerCPUs, Log: logW})
		if err != nil {
			return nil, fmt.Errorf("floor: %w", err)
		}
		logf("floor pid %d at %s", r.PID, r.URL)
		ferr := f(r.URL, r.PID)
		if serr := r.Stop(20 * time.Second); serr != nil && ferr == nil {
			logf("floor stop: %v", serr)
		}
		return r.Problems(), ferr
	}
	withRouter := func(f func(url string, pid int, debugURL string) error) ([]string, error) {
		if o.url != "" {
			return nil, f(o.url, o.routerPID, "")
		}
		spec := routerSpec{Bin: o.routerBin, Env: o.routerEnv, CPUs: o.routerCPUs, Standin: o.permissions == "standin", Log: logW}
		if o.routerSelf {
			exe, err := os.Executable()
			if err != nil {
				return nil, err
			}
			spec.Bin, spec.Args = exe, []string{"-serve-router"}
			if o.heapProf != "" {
				// Fine-grained heap samples for the per-device breakdown.
				spec.Args = append(spec.Args, "-memprofilerate", "4096")
			}
			for _, kv := range o.routerEnv {
				if p, ok := strings.CutPrefix(kv, "UDP_PORT="); ok {
					spec.Args = append(spec.Args, "-udp-port", p)
				}
			}
		}
		r, err := startRouter(ctx, spec)
		if err != nil {
			return nil, err
		}
		logf("router pid %d at %s", r.PID, r.URL)
		ferr := f(r.URL, r.PID, r.DebugURL)
		if serr := r.Stop(20 * time.Second); serr != nil && ferr == nil {
			logf("router stop: %v", serr)
		}
		return r.Problems(), ferr
	}

	// withRouters runs f against n routers: with n > 1, fresh subprocesses
	// on one NATS of this process (the first is the one whose figures
	// runLoad takes itself); else as withRouter.
	withRouters := func(n int, f func(routers []routerRef, debugURL string) error) ([]string, error) {
		if n <= 1 {
			return withRouter(func(url string, pid int, dbg string) error {
				return f([]routerRef{{URL: url, PID: pid}}, dbg)
			})
		}
		ns, err := startClusterNATS()
		if err != nil {
			return nil, err
		}
		defer ns.close()
		var refs []routerRef
		var procs []*routerProc
		defer func() {
			for _, r := range procs {
				if err := r.Stop(20 * time.Second); err != nil {
					logf("router stop: %v", err)
				}
			}
		}()
		for range n {
			r, err := startRouter(ctx, routerSpec{Bin: o.routerBin, Env: o.routerEnv, CPUs: o.routerCPUs, Standin: o.permissions == "standin", Log: logW, NATS: ns.URL()})
			if err != nil {
				return nil, err
			}
			procs = append(procs, r)
			refs = append(refs, routerRef{URL: r.URL, PID: r.PID})
			logf("router pid %d at %s (NATS %s)", r.PID, r.URL, ns.URL())
		}
		ferr := f(refs, "")
		var problems []string
		for _, r := range procs {
			problems = append(problems, r.Problems()...)
		}
		return problems, ferr
	}

	framing := beepclient.Bare
	if o.framing == "prefixed" {
		framing = beepclient.Prefixed
	}
	code := 0
	if o.idle > 0 {
		slots := max(1, o.scenario.Slots)
		_, err := withRouter(func(u string, pid int, dbg string) error {
			res, err := runIdle(ctx, idleConfig{
				URL: u, Devices: o.idle, Warmup: o.idleWarmup, Slots: slots, Conversations: o.scenario.Conversations,
				Rate: o.rate, Settle: o.settle, Hold: o.hold, RouterPID: pid, DebugURL: dbg, HeapProfile: o.heapProf,
				DialTimeout: o.dialTO, NACK: o.nack, Logf: logf,
			})
			rep.Idle = res
			return err
		})
		if err != nil {
			fmt.Fprintf(stderr, "loadtest: idle: %v\n", err)
			code = 1
		}
	} else {
		for _, sc := range scenarios {
			for i := 1; i <= o.runs; i++ {
				prof := ""
				if o.cpuProfile != "" {
					prof = o.cpuProfile
					if len(scenarios) > 1 || o.runs > 1 {
						ext := filepath.Ext(prof)
						prof = fmt.Sprintf("%s-%dx%d-r%d%s", strings.TrimSuffix(prof, ext), sc.Publishers, sc.Subscribers, i, ext)
					}
				}
				var res *runResult
				cfg := loadConfig{
					Scenario: sc, Rate: o.rate, Settle: o.settle, Hold: o.hold, Grace: o.grace,
					SizeMin: o.sizeMin, SizeMax: o.sizeMax, Level: o.level, Framing: framing,
					CPUProfile: prof, ToolProfile: o.toolProf, NACK: o.nack, SRTP: o.srtp, Wire: o.wire,
					Syscalls: o.syscalls, DialTimeout: o.dialTO, Logf: logf,
				}
				problems, err := withRouters(sc.Routers, func(rs []routerRef, dbg string) error {
					c := cfg
					c.URL, c.Others, c.RouterPID, c.DebugURL = rs[0].URL, rs[1:], rs[0].PID, dbg
					var err error
					res, err = runLoad(ctx, c, i)
					return err
				})
				if res != nil {
					res.RouterLog = problems
					rep.Runs = append(rep.Runs, res)
				}
				if o.floor && err == nil && ctx.Err() == nil {
					var fres *runResult
					fproblems, ferr := withFloor(func(u string, pid int) error {
						c := cfg
						c.URL, c.RouterPID, c.CPUProfile, c.ToolProfile = u, pid, "", ""
						var err error
						fres, err = runLoad(ctx, c, i)
						return err
					})
					if fres != nil {
						fres.Name += " floor"
						fres.RouterLog = fproblems
						res.Floor = fres
						if res.Router != nil && fres.Router != nil {
							res.VsFloor = ratioTo(res.Router.PerEgress, fres.Router.PerEgress)
						}
					}
					err = ferr
				}
				if err != nil {
					fmt.Fprintf(stderr, "loadtest: %s run %d: %v\n", sc.Name(), i, err)
					code = 1
					if ctx.Err() != nil {
						break
					}
				}
			}
			if ctx.Err() != nil {
				break
			}
		}
		rep.Best = bestRuns(rep.Runs)
		relayCosts(rep.Runs, rep.Best)
	}
	rep.Finished = time.Now()
	printReport(stdout, rep)
	if o.jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(o.jsonPath, append(b, '\n'), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "loadtest: -json: %v\n", err)
			code = 1
		}
	}
	return code
}

// bestRuns returns, per scenario, the index of its best run: a clean run
// (no loss, no UDP drops at the tool, at least 99.5 % delivered) before
// any other; then the least disturbed one (the fewest cores busy with other
// work, in steps of 0.1 core), because other load changes every figure,
// CPU per packet included (a router that falls behind handles packets in
// batches, for less CPU each); then the lowest router CPU per egress
// packet (without router figures: the highest egress rate).
func bestRuns(runs []*runResult) []int {
	clean := func(r *runResult) bool {
		return r.Loss.Lost == 0 && r.UDPDrops.Tool == 0 && r.Egress.DeliveryPct >= 99.5 && r.Devices.Failed == 0
	}
	better := func(r, b *runResult) bool {
		if cr, cb := clean(r), clean(b); cr != cb {
			return cr
		}
		if !clean(r) && r.Loss.Pct != b.Loss.Pct {
			return r.Loss.Pct < b.Loss.Pct
		}
		if or, ob := math.Round(r.Machine.OtherCores*10), math.Round(b.Machine.OtherCores*10); or != ob {
			return or < ob
		}
		if r.Router != nil && b.Router != nil && r.Router.USPerEgressPacket > 0 && b.Router.USPerEgressPacket > 0 {
			return r.Router.USPerEgressPacket < b.Router.USPerEgressPacket
		}
		return r.Egress.PPS > b.Egress.PPS
	}
	best := map[string]int{}
	var order []string
	for i, r := range runs {
		j, ok := best[r.Name]
		if !ok {
			best[r.Name] = i
			order = append(order, r.Name)
		} else if better(r, runs[j]) {
			best[r.Name] = i
		}
	}
	out := make([]int, 0, len(order))
	for _, n := range order {
		out = append(out, best[n])
	}
	return out
}

func printReport(w io.Writer, rep *report) {
	fmt.Fprintf(w, "router: %s; host: %d CPUs, load average %s; tool GOMAXPROCS %d on CPUs %s\n",
		rep.Router, rep.Host.CPUs, rep.Host.LoadAvg, rep.Host.GOMAXPROCS, rep.Host.ToolCPUs)
	if len(rep.Runs) > 0 {
		best := map[int]bool{}
		for _, i := range rep.Best {
			best[i] = true
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "scenario\trun\tdevices\tingress pkt/s\tegress pkt/s\tdelivery %\tloss %\tlat p50\tp95\tp99\tmax ms\twire p50\tp99\tmax ms\tfwd p50\tp99 ms\tconnect p50\tp99 ms\trouter cores\t(sys)\tµs/egress pkt\tpkt/s per core\trouter RSS MiB\ttool cores\tother cores\t")
		for i, r := range rep.Runs {
			mark := ""
			if best[i] && len(rep.Runs) > len(rep.Best) {
				mark = "*"
			}
			cores, sys, us, ppc, rss := "-", "-", "-", "-", "-"
			w50, w99, wmax := "-", "-", "-"
			if wl := r.WireLatencyMS; wl != nil && wl.Samples > 0 {
				w50, w99, wmax = fmt.Sprintf("%.2f", wl.P50), fmt.Sprintf("%.2f", wl.P99), fmt.Sprintf("%.2f", wl.Max)
			}
			f50, f99 := "-", "-"
			if f := r.RouterForwardMS; f != nil && f.P50 != nil && f.P99 != nil {
				f50, f99 = fmt.Sprintf("%.3f", *f.P50), fmt.Sprintf("%.3f", *f.P99)
			}
			if r.Router != nil {
				cores = fmt.Sprintf("%.2f", r.Router.Cores)
				sys = fmt.Sprintf("%.2f", r.Router.SysSeconds/r.WindowS)
				us = fmt.Sprintf("%.2f", r.Router.USPerEgressPacket)
				ppc = fmt.Sprintf("%.0f", r.Router.EgressPPSPerCore)
				rss = fmt.Sprintf("%.1f", float64(r.Router.RSSPeakKiB)/1024)
			}
			fmt.Fprintf(tw, "%s\t%d%s\t%d/%d\t%.0f\t%.0f\t%.2f\t%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t\n",
				r.Name, r.Run, mark, r.Devices.Connected, r.Devices.Connected+r.Devices.Failed,
				r.Ingress.PPS, r.Egress.PPS, r.Egress.DeliveryPct, r.Loss.Pct,
				r.LatencyMS.P50, r.LatencyMS.P95, r.LatencyMS.P99, r.LatencyMS.Max, w50, w99, wmax, f50, f99,
				r.ConnectMS.P50, r.ConnectMS.P99, cores, sys, us, ppc, rss, r.Tool.Cores, r.Machine.OtherCores)
		}
		tw.Flush()
		printCosts(w, rep.Runs)
		if slices.ContainsFunc(rep.Runs, func(r *runResult) bool { return r.WireLatencyMS != nil }) {
			fmt.Fprintln(w, "lat: the subscriber's read from its pion track − the send time in the payload; wire: the kernel's receive time at the subscriber's socket − the send time")
		}
		fwd := "fwd: the router's own added latency, from its /metrics: kernel receive time at the router's socket → last copy sent"
		if !slices.ContainsFunc(rep.Runs, func(r *runResult) bool { return r.RouterForwardMS != nil }) {
			fwd += " (not reported: the router's /metrics has no " + forwardLatencyMetric + " or could not be read; -v says why)"
		}
		fmt.Fprintln(w, fwd)
		if len(rep.Runs) > len(rep.Best) {
			fmt.Fprintln(w, "* best run of its scenario: a clean run (no loss, no drops at the tool, ≥ 99.5 % delivered) first, then the least disturbed (fewest other cores busy), then the lowest router CPU per egress packet")
		}
		printCluster(w, rep.Runs)
		for _, r := range rep.Runs {
			if p := r.Processing; p != nil {
				fmt.Fprintf(w, "%s run %d: harness router's processing per published packet (pipeline and fan-out): p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.Name, r.Run, p.P50, p.P99, p.Max)
			}
			if r.UDPDrops.Tool > 0 || (r.UDPDrops.Router != nil && *r.UDPDrops.Router > 0) {
				rd := "?"
				if r.UDPDrops.Router != nil {
					rd = strconv.FormatUint(*r.UDPDrops.Router, 10)
				}
				fmt.Fprintf(w, "%s run %d: UDP receive-buffer drops: router %s, tool %d\n", r.Name, r.Run, rd, r.UDPDrops.Tool)
			}
			if f := r.RouterForwardMS; f != nil && f.Samples == 0 {
				fmt.Fprintf(w, "%s run %d: the router's %s observed no packet in the window\n", r.Name, r.Run, forwardLatencyMetric)
			}
			if wl := r.WireLatencyMS; wl != nil && wl.NoWireTime > 0 {
				fmt.Fprintf(w, "%s run %d: %d of %d received packets had no wire time (kernel arrival no longer known); the wire figures leave them out\n",
					r.Name, r.Run, wl.NoWireTime, wl.Samples+wl.NoWireTime)
			}
			if r.Devices.Failed > 0 {
				fmt.Fprintf(w, "%s run %d: %d devices failed: %s\n", r.Name, r.Run, r.Devices.Failed, r.Devices.FirstError)
			}
		}
	}
	if r := rep.Idle; r != nil && r.Failed > 0 {
		fmt.Fprintf(w, "idle: %d devices failed: %s\n", r.Failed, r.FirstError)
	}
	if r := rep.Idle; r != nil {
		fmt.Fprintf(w, "idle: %d of %d devices connected (K=%d, after %d warm-up): router RSS %d → %d KiB = %.1f KiB per device; threads %d → %d; connect p50 %.1f ms p99 %.1f ms\n",
			r.Connected, r.Devices, r.Slots, r.Warmup, r.RSSBeforeKiB, r.RSSAfterKiB, r.RSSPerDeviceKiB, r.ThreadsBefore, r.ThreadsAfter, r.ConnectMS.P50, r.ConnectMS.P99)
		if r.HoldSeconds > 0 {
			fmt.Fprintf(w, "idle: router CPU over %.0f s with every device connected: %.3f cores = %.1f µs per device per second\n",
				r.HoldSeconds, r.CPUCores, r.CPUPerDeviceUsPS)
		}
		if h := r.Harness; h != nil {
			fmt.Fprintf(w, "idle (harness, after GC): goroutines %d → %d = %.1f per device; heap in use %.1f KiB and stacks %.1f KiB per device\n",
				h.Before.Goroutines, h.After.Goroutines, h.GoroutinesPerDev, h.HeapPerDevKiB, h.StackPerDevKiB)
		}
		if r.HeapProfile != "" {
			fmt.Fprintf(w, "heap profile: %s (baseline %s.before, goroutines %s.goroutines): go tool pprof -top -sample_index=inuse_space -diff_base %s.before %s\n", r.HeapProfile, r.HeapProfile, r.HeapProfile, r.HeapProfile, r.HeapProfile)
		}
	}
}

// printCosts prints, per run, the router's cost per egress packet in
// detail and, with -floor, the floor's and the ratios.
func printCosts(w io.Writer, runs []*runResult) {
	if !slices.ContainsFunc(runs, func(r *runResult) bool { return r.Router != nil && r.Router.PerEgress != nil }) {
		return
	}
	fmt.Fprintln(w, "per egress packet (CPU, user and system µs; system calls; context switches voluntary/involuntary; run-queue wait µs):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\trun\tdelivery %\tloss %\tto subscribers\tto publishers\tCPU µs\tuser\tsys\tper subscriber copy\tsyscalls\tsendmmsg\tsendto\trecvmmsg\tctxsw vol\tinvol\trunq µs\trunq %\t×floor CPU\tuser\tsys\tsyscalls\tctxsw\t")
	row := func(r *runResult, vs *floorRatio) {
		if r.Router == nil || r.Router.PerEgress == nil {
			return
		}
		pe := r.Router.PerEgress
		sc := func(k string) string {
			if v, ok := pe.Syscalls[k]; ok {
				return fmt.Sprintf("%.3f", v)
			}
			return "-"
		}
		x := func(v float64) string {
			if vs == nil || v == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f", v)
		}
		var rc, ru, rs, rsc, rcs float64
		if vs != nil {
			rc, ru, rs, rsc, rcs = vs.CPU, vs.User, vs.Sys, vs.Syscalls, vs.CtxSwitches
		}
		fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.3f\t%d\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.2f\t%.1f\t%s\t%s\t%s\t%s\t%s\t\n",
			r.Name, r.Run, r.Egress.DeliveryPct, r.Loss.Pct, r.Egress.ToSubscribers, r.Egress.ToPublishers, pe.CPUUS, pe.UserUS, pe.SysUS, pe.CPUPerSubscriberCopyUS,
			sc("syscalls"), sc("sendmmsg"), sc("sendto"), sc("recvmmsg"), pe.VoluntaryCtxSw, pe.InvoluntaryCtxSw, pe.RunQueueWaitUS,
			r.Router.RunQueueWaitPct, x(rc), x(ru), x(rs), x(rsc), x(rcs))
	}
	for _, r := range runs {
		row(r, r.VsFloor)
		if r.Floor != nil {
			row(r.Floor, nil)
		}
	}
	tw.Flush()
}
