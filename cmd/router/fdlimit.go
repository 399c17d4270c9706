package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/beepvoice/router/internal/throttle"
)

// File-descriptor headroom. The router never lets clients take its file
// descriptors up to the process limit (RLIMIT_NOFILE; Go raises the soft
// limit to the hard one at start on Linux): past that, accept(2) fails,
// ICE cannot open a socket, NATS cannot reconnect and a spool file cannot
// be opened, and nobody can connect, the operator's probes included. Of
// the limit L:
//
//   - HTTP connections on LISTEN (requests, /connect and Sylk/Arbiter
//     WebSockets, /subscribe and demo SSE streams: one descriptor each) may
//     hold httpShare (half). Past it a new connection is accepted, answered
//     503 with Retry-After and closed, counted and logged (throttled). The
//     connections already open go on.
//   - ICE sockets (one per local address per peer, without UDP_PORT) may
//     hold iceShare (30%): a new peer that would pass it is refused
//     (rtc.ErrSocketLimit; /connect closes with 1013 "try again later").
//     Established calls go on.
//   - The rest, a fifth, is never given to clients: NATS, the listeners,
//     the embedded JetStream store, plugin pipes, spool and recording
//     files, TURN relays (bounded by TURN_MAX_ALLOCATIONS), the refusals in
//     progress and METRICS_LISTEN's connections (at most extras each: a
//     fortieth of the limit, from 2 to 32), so /healthz keeps answering
//     there when clients have taken their shares.
//
// Half for HTTP because every client holds an HTTP connection (a device's
// /subscribe stream for the whole day) while ICE sockets exist only during
// calls; a fifth in reserve so that the bounded extras above fit even at a
// small limit such as 1024.
const (
	httpShare = 50 // percent of RLIMIT_NOFILE
	iceShare  = 30 // percent of RLIMIT_NOFILE
	maxExtras = 32 // most METRICS_LISTEN connections, and most refusals in progress
	// refuseRetryAfter is the Retry-After, in seconds, of a refusal.
	refuseRetryAfter = 5
)

// fdBudget is how the descriptor limit is shared out; zeros mean no bound
// (the limit is unknown or unlimited).
type fdBudget struct {
	limit      uint64
	httpConns  int
	iceSockets int
	// extras bounds the connections open on METRICS_LISTEN, and the
	// refusals in progress on each listener.
	extras int
}

// readFDLimit returns the process's RLIMIT_NOFILE soft limit, or 0 when it
// is unknown or unlimited.
func readFDLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	if r.Cur > 1<<40 { // RLIM_INFINITY, or as good as
		return 0, nil
	}
	return r.Cur, nil
}

// newFDBudget shares out limit (0: no bound).
func newFDBudget(limit uint64) fdBudget {
	if limit == 0 {
		return fdBudget{extras: maxExtras}
	}
	return fdBudget{
		limit:      limit,
		httpConns:  max(1, int(limit*httpShare/100)),
		iceSockets: max(1, int(limit*iceShare/100)),
		extras:     int(min(max(limit/40, 2), maxExtras)),
	}
}

// fdHeadroom reads the descriptor limit, logs it and how it is shared out
// once, and warns when the configured bounds of connections cannot fit in
// the HTTP share (clients then meet the 503 before those bounds).
func fdHeadroom(cfg config, log *slog.Logger) fdBudget {
	limit, err := readFDLimit()
	if err != nil {
		log.Warn("file descriptor limit unknown: connections and ICE sockets are not bounded by it", "err", err)
		return newFDBudget(0)
	}
	return planFDs(cfg, limit, log)
}

// planFDs shares limit out (newFDBudget) and logs it, as fdHeadroom.
func planFDs(cfg config, limit uint64, log *slog.Logger) fdBudget {
	b := newFDBudget(limit)
	if limit == 0 {
		log.Info("file descriptor limit: unlimited; connections and ICE sockets are bounded by the settings only")
		return b
	}
	// One socket per address ICE gathers on (a guess for the log: the
	// Engine measures it).
	perPeer := len(cfg.ICEIPs)
	if perPeer == 0 {
		for _, ip := range hostIPs() {
			if !ip.IsLoopback() {
				perPeer++
			}
		}
	}
	perPeer = max(1, perPeer)
	if cfg.UDPPort > 0 || !cfg.ICEPerPeer {
		perPeer = 0
	}
	peers := "no bound (one ICE socket for all peers)"
	if perPeer > 0 {
		peers = fmt.Sprintf("about %d", b.iceSockets/perPeer)
	}
	log.Info("file descriptor limit", "limit", limit, "http_connections", b.httpConns, "ice_sockets", b.iceSockets, "peers", peers,
		"reserved", int(limit)-b.httpConns-b.iceSockets)
	// The bounds of connections that stay open. 0 is no bound.
	bounds := []struct {
		name string
		n    int
	}{
		{"SUBSCRIBE_MAX", cfg.MaxStreams},
		{"CONNECT_MAX_PENDING", cfg.MaxPending},
		{"SYLK_MAX_CONNECTIONS", cfg.SylkMaxConns},
	}
	sum, unbounded := 0, []string{}
	for _, x := range bounds {
		if x.n == 0 {
			unbounded = append(unbounded, x.name)
		}
		sum += x.n
	}
	switch {
	case len(unbounded) > 0:
		log.Warn("connection bounds set to 0 (no limit) are bounded by the file descriptor limit only: past it new connections are refused with 503",
			"settings", fmt.Sprint(unbounded), "http_connections", b.httpConns)
	case sum > b.httpConns && bounds[0].n == defaultInt("SUBSCRIBE_MAX") && bounds[1].n == defaultInt("CONNECT_MAX_PENDING") &&
		bounds[2].n == defaultInt("SYLK_MAX_CONNECTIONS"):
		// The defaults suit a raised limit; below it the headroom is the
		// bound, which is what the operator wants by default: say so
		// without a warning on every start.
		log.Info("connections are bounded by the file descriptor headroom before the default SUBSCRIBE_MAX, CONNECT_MAX_PENDING and SYLK_MAX_CONNECTIONS: past it new connections are refused with 503",
			"http_connections", b.httpConns, "limit", limit)
	case sum > b.httpConns:
		log.Warn("configured connection bounds exceed the file descriptor headroom: past it new connections are refused with 503 before these bounds are reached; raise the limit (ulimit -n, LimitNOFILE=, docker --ulimit nofile=) or lower the bounds",
			"SUBSCRIBE_MAX+CONNECT_MAX_PENDING+SYLK_MAX_CONNECTIONS", sum, "http_connections", b.httpConns, "limit", limit)
	}
	if cfg.TURN.Listen != "" && (cfg.TURN.MaxAllocations == 0 || cfg.TURN.MaxAllocations > int(limit)/10) {
		log.Warn("TURN_MAX_ALLOCATIONS does not fit in the file descriptors reserved beside the clients' shares: relays may exhaust them",
			"TURN_MAX_ALLOCATIONS", cfg.TURN.MaxAllocations, "reserved", int(limit)-b.httpConns-b.iceSockets)
	}
	return b
}

// limitListener is a listener that keeps at most max connections open:
// past it, a new connection is answered 503 (over TLS when tlsConfig is
// set) and closed. max ≤ 0: no bound.
type limitListener struct {
	net.Listener
	name      string // the setting, for logs and metrics
	max       int64
	tlsConfig *tls.Config
	log       *slog.Logger

	open     atomic.Int64
	refused  atomic.Uint64
	refusing chan struct{}
	gate     throttle.Gate
}

// newLimitListener bounds ln's open connections to max (≤ 0: no bound).
func newLimitListener(ln net.Listener, name string, max, refusing int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, name: name, max: int64(max), log: log, refusing: make(chan struct{}, refusing), gate: throttle.Gate{Every: 10 * time.Second}}
}

// Accept returns the next connection within the bound; connections past it
// are refused here, and Accept waits for the next one.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		n := l.open.Add(1)
		cc := &countedConn{Conn: c, l: l}
		if l.max <= 0 || n <= l.max {
			return cc, nil
		}
		l.refuse(cc, n-1)
	}
}

// refusal is the answer to a connection past the bound.
var refusal = fmt.Sprintf("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nRetry-After: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
	refuseRetryAfter, len(refusalBody), refusalBody)

const refusalBody = "the router is at its connection limit (file descriptors); retry later\n"

// refuse answers c's first request 503 and closes it, on a goroutine of
// its own (a TLS handshake, the request, and what the client sends after,
// so that the close does not reset the answer), within 2 s; past the bound
// of refusals in progress it just closes.
func (l *limitListener) refuse(c *countedConn, open int64) {
	l.refused.Add(1)
	if ok, suppressed := l.gate.Allow(time.Now()); ok {
		l.log.Warn("refusing a new connection: file descriptor headroom reached", "listener", l.name, "open", open, "max", l.max,
			"remote", c.RemoteAddr().String(), "refused", l.refused.Load(), "not_logged", suppressed)
	}
	select {
	case l.refusing <- struct{}{}:
	default:
		_ = c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		var conn net.Conn = c
		if l.tlsConfig != nil {
			cfg := l.tlsConfig.Clone()
			cfg.NextProtos = []string{"http/1.1"} // the answer is HTTP/1.1
			tc := tls.Server(c, cfg)
			if tc.Handshake() != nil {
				return
			}
			conn = tc
		}
		// Answer the request, once read: an answer sent before it
		// would be taken for a broken connection by most clients.
		br := bufio.NewReaderSize(conn, 4096)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_ = req.Body.Close()
		if _, err := io.WriteString(conn, refusal); err != nil {
			return
		}
		if tc, ok := conn.(*tls.Conn); ok {
			_ = tc.CloseWrite()
		} else if tcp, ok := c.Conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite()
		}
		// Read what the client sent until it closes (or the deadline):
		// closing with unread data would reset the connection, and the
		// client might lose the answer.
		_, _ = io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
	}()
}

// collectors returns the listener's metrics.
func (l *limitListener) collectors() []prometheus.Collector {
	labels := prometheus.Labels{"listener": l.name}
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "router_http_connections", Help: "HTTP connections open, WebSockets and SSE streams included.", ConstLabels: labels},
			func() float64 { return float64(l.open.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "router_http_refused_total", Help: "HTTP connections refused (503) because the file descriptor headroom was reached.", ConstLabels: labels},
			func() float64 { return float64(l.refused.Load()) }),
	}
}

// countedConn is a connection of a limitListener; closing it frees its
// place.
type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

// Close closes the connection and frees its place, once.
func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}

// CloseWrite shuts down the writing side, as net/http does to end a
// response it cannot keep alive.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// bound wraps ln in a limitListener of at most max connections (≤ 0: no
// bound) and refusing connections in progress, refusing over TLS when
// tlsConfig is set, and registers its metrics.
func bound(ln net.Listener, name string, max, refusing int, tlsConfig *tls.Config, reg prometheus.Registerer, log *slog.Logger) (*limitListener, error) {
	l := newLimitListener(ln, name, max, refusing, log)
	l.tlsConfig = tlsConfig
	for _, c := range l.collectors() {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	return l, nil
}
