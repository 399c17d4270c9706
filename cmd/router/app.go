package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/handlers"
	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/cluster"
	"github.com/beepvoice/router/internal/origin"
	"github.com/beepvoice/router/metrics"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/plugins"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/signal/arbiter"
	"github.com/beepvoice/router/signal/beep"
	"github.com/beepvoice/router/signal/demo"
	"github.com/beepvoice/router/signal/devices"
	"github.com/beepvoice/router/signal/sylk"
	"github.com/beepvoice/router/stages"
	"github.com/beepvoice/router/turn"
)

// app is the wired router: NATS, the pipeline, the session manager and the
// HTTP front-ends.
type app struct {
	log     *slog.Logger
	ns      *server.Server // embedded NATS, or nil
	nc      *nats.Conn
	pipe    *pipeline.Pipeline
	rooms   *room.Manager
	cluster *cluster.Node // with CLUSTER on, else nil
	devices *devices.Service
	demo    *demo.Server // -dev only
	sylk    *sylk.Server
	arb     *arbiter.Server
	// jsDir is the embedded JetStream's store when NATS_STORE_DIR is
	// empty: a directory of this process, removed at shutdown.
	jsDir   string
	turnSrv *turn.Server // the built-in TURN server, when TURN_LISTEN is set
	srv     *http.Server
	ln      net.Listener
	served  chan error
	msrv    *http.Server // metrics server, when METRICS_LISTEN is set
	mln     net.Listener
	natsRTT *metrics.Probe // a recent round trip to NATS, for /readyz
	certs   *certStore     // TLS on LISTEN (tls.go), or nil
	fds     fdBudget       // the file descriptor headroom (fdlimit.go)
}

// NATS readiness: a flush (PING, PONG) with a deadline every
// natsProbeEvery, in the background, so that /readyz answers at once and a
// storm of /readyz requests sends no extra flush. A hung NATS server (its
// TCP connection open, nothing answered) makes the router unready within
// natsProbeEvery+natsProbeTimeout.
const (
	natsProbeEvery   = 2 * time.Second
	natsProbeTimeout = time.Second
)

// registry returns the stage kinds the router knows.
func registry() *pipeline.Registry {
	r := pipeline.NewRegistry()
	stages.Register(r)
	plugins.Register(r)
	return r
}

// pipelineConfig reads the PIPELINE file, or returns the default.
func pipelineConfig(path string, reg *pipeline.Registry) (*pipeline.Config, error) {
	if path == "" {
		return reg.Config(stages.Default...)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("PIPELINE: %w", err)
	}
	defer f.Close()
	c, err := pipeline.ParseConfig(f)
	if err != nil {
		return nil, fmt.Errorf("PIPELINE %s: %w", path, err)
	}
	return c, nil
}

// start builds and starts the router with the stage kinds of reg. On error,
// what was started (embedded NATS, plugins, listeners) is stopped, and the
// error names the file, stage, setting or address at fault.
func start(cfg config, log *slog.Logger, reg *pipeline.Registry) (_ *app, err error) {
	// a is not the named result: "return nil, err" must not hide the
	// partly started app from the release below.
	a := &app{log: log, served: make(chan error, 1)}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			if serr := a.shutdown(ctx); serr != nil {
				log.Warn("releasing the partly started router", "err", serr)
			}
		}
	}()

	a.fds = fdHeadroom(cfg, log)
	if a.certs, err = newCertStore(cfg, log); err != nil {
		return nil, err
	}
	pc, err := pipelineConfig(cfg.Pipeline, reg)
	if err != nil {
		return nil, err
	}
	if err := a.connectNATS(cfg); err != nil {
		return nil, err
	}
	promReg := metrics.NewRegistry()
	a.pipe, err = reg.Build(pc, pipeline.Env{NATS: a.nc, Logger: log, Metrics: promReg})
	if err != nil {
		if cfg.Pipeline == "" {
			return nil, fmt.Errorf("pipeline: %w", err)
		}
		return nil, fmt.Errorf("PIPELINE %s: %w", cfg.Pipeline, err)
	}
	roomsCfg := room.Config{
		Media: rtc.Config{
			ICEIPs:              cfg.ICEIPs,
			PublicIPs:           cfg.PublicIPs,
			UDPPort:             cfg.UDPPort,
			SharedSocket:        !cfg.ICEPerPeer,
			ICEServers:          cfg.ICEServers,
			ConnectTimeout:      cfg.ConnectTimeout,
			DisconnectedTimeout: cfg.ICEDisconnected,
			FailedTimeout:       cfg.ICEFailed,
			KeepaliveInterval:   cfg.ICEKeepalive,
			MaxDownTracks:       cfg.MaxSlots,
			MaxMediaLines:       cfg.MaxMediaLines,
			MaxTracksPerPeer:    cfg.MaxTracks,
			ForbiddenNetworks:   cfg.Forbidden,
			KeyframeInterval:    cfg.KeyframeEvery,
			TrackBuffer:         cfg.TrackBuffer,
			PionEgress:          cfg.PionEgress,
			PionIngress:         cfg.PionIngress,
			MaxSockets:          a.fds.iceSockets,
		},
		Sink:                    a.pipe,
		Mixing:                  a.pipe.Mixing(),
		Logger:                  log,
		MaxPeersPerUser:         cfg.MaxPeersPerUser,
		MaxPeersPerConversation: cfg.MaxPeersPerConv,
		MaxConversations:        cfg.MaxConvs,
		MembershipTTL:           cfg.MembershipTTL,
		IdleMembershipTTL:       cfg.IdleTTL,
	}
	if cfg.Cluster {
		// Memberships shared and media relayed with the other routers
		// on this NATS (package cluster).
		a.cluster, err = cluster.New(cluster.Config{
			NATS:          a.nc,
			Logger:        log,
			Replicas:      cfg.MembershipReplicas,
			MembershipTTL: cfg.MembershipTTL,
			Heartbeat:     cfg.ClusterHeartbeat,
		})
		if err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
		if err := a.cluster.Metrics(promReg); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
		roomsCfg.Sink = a.cluster.Sink(a.pipe)
		roomsCfg.Membership = a.cluster
		roomsCfg.Messages = a.cluster
		roomsCfg.Changed = a.cluster.Changed
	}
	a.rooms, err = room.New(roomsCfg)
	if err != nil {
		return nil, fmt.Errorf("media: %w", err)
	}
	if a.cluster != nil {
		if err := a.cluster.Start(a.rooms, a.pipe); err != nil {
			return nil, err
		}
		log.Info("cluster: relaying with the routers on this NATS", "router", a.cluster.ID())
	}

	var perms permissions.Checker = permissions.AllowAll{}
	if cfg.PermissionsHost != "allow-all" {
		c, err := permissions.NewClient(cfg.PermissionsHost, cfg.PermTimeout)
		if err != nil {
			return nil, fmt.Errorf("PERMISSIONS_HOST: %w", err)
		}
		perms = c
	} else {
		log.Warn("PERMISSIONS_HOST=allow-all: every user may join every conversation (demo only)")
	}
	claims := claim.FromHeader
	switch {
	case cfg.JWTPublicKey != "":
		key, err := claim.LoadRSAPublicKey(cfg.JWTPublicKey)
		if err != nil {
			return nil, fmt.Errorf("AUTH_JWT_PUBLIC_KEY: %w", err)
		}
		claims = claim.JWT(key)
		log.Info("verifying Beep JWTs; X-User-Claim is ignored")
	case cfg.Dev:
		claims = claim.FromHeaderOrQuery
		log.Warn("DEV MODE: identities are taken from ?userid=&clientid= query parameters, permissions are not checked. Never expose this router.")
	}
	origins := origin.New(cfg.Origins)

	r := mux.NewRouter()
	beep.New(beep.Config{
		Rooms:        a.rooms,
		Permissions:  perms,
		Claims:       claims,
		Logger:       log,
		OfferTimeout: cfg.OfferTimeout,
		MaxMessage:   cfg.MaxMessage,
		CheckOrigin:  origins.Check,
		JoinRate:     rate.Limit(cfg.JoinRate),
		JoinBurst:    cfg.JoinBurst,
		// The settings' 0 (no bound) is the packages' negative.
		MaxPendingPerAddr: orNone(cfg.MaxPendingPerAddr),
		MaxPending:        orNone(cfg.MaxPending),
	}).Register(r)
	a.devices, err = devices.New(devices.Config{
		NATS:              a.nc,
		Claims:            claims,
		Logger:            log,
		MaxStreamsPerUser: orNone(cfg.MaxStreamsPerUser),
		MaxStreams:        orNone(cfg.MaxStreams),
	})
	if err != nil {
		return nil, fmt.Errorf("device signalling: %w", err)
	}
	a.devices.Register(r)
	var sylkNATS *nats.Conn // invitations to the other routers of the cluster
	if a.cluster != nil {
		sylkNATS = a.nc
	}
	a.sylk, err = sylk.New(sylk.Config{
		Rooms:               a.rooms,
		NATS:                sylkNATS,
		Permissions:         perms,
		AccountsFile:        cfg.SylkAccounts,
		Dev:                 cfg.Dev,
		Logger:              log.With("api", "sylk"),
		CheckOrigin:         origins.Check,
		MaxMessage:          cfg.MaxMessage,
		PermissionTimeout:   cfg.PermTimeout,
		RingTimeout:         cfg.SylkRingTimeout,
		MaxConnections:      orNone(cfg.SylkMaxConns),
		MaxCallsPerAccount:  orNone(cfg.SylkMaxCalls),
		MaxRoomParticipants: orNone(cfg.SylkMaxRoomParticipants),
		SIPRegistrar:        cfg.SIPRegistrar,
		SIPTimeout:          cfg.SIPTimeout,
		SIPExpires:          cfg.SIPExpires,
		SIPMaxInFlight:      cfg.SIPMaxInFlight,
	})
	if err != nil {
		// The error names the accounts file or the registrar at fault.
		return nil, fmt.Errorf("sylk API: %w", err)
	}
	a.sylk.Register(r)
	a.arb, err = arbiter.New(arbiter.Config{
		Rooms:           a.rooms,
		NATS:            a.nc,
		Logger:          log.With("api", "arbiter"),
		MaxRooms:        orNone(cfg.ArbiterMaxRooms),
		IdleRooms:       cfg.ArbiterIdleRooms,
		Origins:         cfg.ArbiterOrigins,
		MaxParticipants: orNone(cfg.ArbiterMaxParticipants),
		MaxMessage:      cfg.MaxMessage,
		Replicas:        cfg.ArbiterReplicas,
	})
	if err != nil {
		return nil, fmt.Errorf("arbiter API: %w", err)
	}
	if a.turnSrv, err = startTURN(cfg.TURN, cfg.Forbidden, log); err != nil {
		return nil, err
	}
	if a.turnSrv != nil {
		if err := promReg.Register(a.turnSrv.Collector()); err != nil {
			return nil, fmt.Errorf("metrics: %w", err)
		}
	}
	// Clients get the built-in TURN server here (an empty list without
	// it); the router's own peers use only ICE_SERVERS.
	r.Handle("/ice-servers", turn.ICEServersHandler(a.turnSrv, claims)).Methods(http.MethodGet)
	if cfg.Dev {
		a.demo, err = demo.New(demo.Config{NATS: a.nc, Logger: log, Slots: a.slotUsers})
		if err != nil {
			return nil, fmt.Errorf("demo page: %w", err)
		}
		a.demo.Register(r)
	}

	if err := metrics.Register(promReg, metrics.Sources{Rooms: a.rooms, Pipeline: a.pipe, NATSConnected: a.nc.IsConnected}); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	a.natsRTT = metrics.StartProbe(a.natsRoundTrip, natsProbeEvery)
	ops := metrics.Handler(promReg, a.ready)
	if cfg.MetricsListen == "" {
		r.Handle("/metrics", ops)
		r.Handle("/healthz", ops)
		r.Handle("/readyz", ops)
	} else {
		a.mln, err = net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return nil, fmt.Errorf("METRICS_LISTEN: %w", err)
		}
		if a.mln, err = bound(a.mln, "METRICS_LISTEN", a.fds.extras, a.fds.extras, nil, promReg, log); err != nil {
			return nil, err
		}
		a.msrv = newServer(ops, cfg, log)
		go func() { _ = a.msrv.Serve(a.mln) }()
	}

	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("LISTEN: %w", err)
	}
	var listenTLS *tls.Config
	if a.certs != nil {
		listenTLS = a.certs.tlsConfig()
	}
	if a.ln, err = bound(a.ln, "LISTEN", a.fds.httpConns, a.fds.extras, listenTLS, promReg, log); err != nil {
		return nil, err
	}
	var h http.Handler = r
	if len(cfg.Origins) > 0 {
		h = handlers.CORS(
			handlers.AllowedOrigins(origins.List()),
			handlers.AllowedMethods([]string{http.MethodGet, http.MethodPost}),
			handlers.AllowedHeaders([]string{"Authorization", "Content-Type", claim.Header}),
		)(r)
	}
	// Outermost: the Arbiter API answers its customers' origins itself
	// (ARBITER_ORIGINS), whatever ALLOWED_ORIGINS says.
	h = a.arb.Bypass(h)
	a.srv = newServer(h, cfg, log)
	a.srv.TLSConfig = listenTLS
	if a.demo != nil {
		// The demo's event streams end on Close; Shutdown waits for them.
		a.srv.RegisterOnShutdown(func() { _ = a.demo.Close() })
	}
	go func() { a.served <- a.serve() }()
	natsDesc := a.nc.ConnectedUrlRedacted()
	switch {
	case natsDesc == "" && a.ns == nil:
		natsDesc = "unreachable, retrying: " + redactURLs(strings.Join(cfg.NATS, ","))
	case a.ns != nil && cfg.NATSExpose == "":
		natsDesc = "embedded, in-process only"
	case a.ns != nil:
		natsDesc = "embedded, serving " + a.ns.ClientURL()
	}
	log.Info("router listening", "addr", a.ln.Addr().String(), "scheme", a.scheme(), "pipeline", strings.Join(a.pipe.Names(), " → "), "nats", natsDesc)
	a.startupLog(cfg)
	return a, nil
}

// newServer returns an HTTP server with timeouts that a slow client cannot
// hold open. WebSockets and SSE streams manage their own deadlines.
func newServer(h http.Handler, cfg config, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.HTTPReadHeader,
		ReadTimeout:       cfg.HTTPRead,
		WriteTimeout:      cfg.HTTPWrite,
		IdleTimeout:       cfg.HTTPIdle,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// ready reports why the router cannot serve yet, or nil: NATS must be
// connected and have answered a recent round trip.
func (a *app) ready() error {
	if s := a.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("NATS %s", s)
	}
	return a.natsRTT.Err()
}

// natsRoundTrip flushes the NATS connection with a deadline: a server that
// keeps the connection open but answers nothing fails it.
func (a *app) natsRoundTrip() error {
	if s := a.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("NATS %s", s)
	}
	if err := a.nc.FlushTimeout(natsProbeTimeout); err != nil {
		return fmt.Errorf("NATS round trip: %w", err)
	}
	return nil
}

// connectNATS connects to the configured NATS, starting the embedded one if
// so configured. An external NATS that is down at start is retried in the
// background: the router serves calls meanwhile and counts unsent bites.
func (a *app) connectNATS(cfg config) error {
	opts := []nats.Option{
		nats.Name("beep-router"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(natsRetryEvery),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				a.log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { a.log.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
	if cfg.NATS != nil {
		opts = append(opts, cfg.NATSSecurity.options()...)
		nc, err := nats.Connect(strings.Join(cfg.NATS, ","), append(opts, nats.RetryOnFailedConnect(true), natsRetryLog(a.log, cfg.NATS))...)
		if err != nil {
			return fmt.Errorf("NATS %s: %w", redactURLs(strings.Join(cfg.NATS, ",")), err)
		}
		a.nc = nc
		logNATSPending(a.log, nc, cfg.NATS)
		return nil
	}
	// JetStream holds the state front-ends share (the Arbiter rooms). Its
	// store is NATS_STORE_DIR, or a directory of this process: nats-server
	// would otherwise use one under the system's temporary directory that
	// every router on the host shares.
	storeDir := cfg.NATSStoreDir
	if storeDir == "" {
		d, err := os.MkdirTemp("", "router-jetstream-")
		if err != nil {
			return fmt.Errorf("embedded NATS: JetStream store: %w", err)
		}
		a.jsDir, storeDir = d, d
	}
	so := &server.Options{ServerName: "beep-router", NoSigs: true, NoLog: true, DontListen: true, JetStream: true, StoreDir: storeDir}
	if cfg.NATSExpose != "" {
		host, port, _ := net.SplitHostPort(cfg.NATSExpose)
		so.DontListen = false
		so.Host = host
		so.Port, _ = strconv.Atoi(port)
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return fmt.Errorf("embedded NATS: %w", err)
	}
	// The server reports a failure to listen (NATS_EMBEDDED_LISTEN taken)
	// only through its logger: catch it rather than wait 10s in silence.
	fatal := natsFatal(make(chan string, 1))
	ns.SetLogger(fatal, false, false)
	go ns.Start()
	a.ns = ns // shutdown releases it from here on
	for deadline := time.Now().Add(10 * time.Second); !ns.ReadyForConnections(50 * time.Millisecond); {
		select {
		case msg := <-fatal:
			if cfg.NATSExpose != "" {
				return fmt.Errorf("NATS_EMBEDDED_LISTEN=%s: embedded NATS: %s", cfg.NATSExpose, msg)
			}
			return fmt.Errorf("embedded NATS: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			return errors.New("embedded NATS: not ready in 10s")
		}
	}
	nc, err := nats.Connect("", append(opts, nats.InProcessServer(ns))...)
	if err != nil {
		return fmt.Errorf("embedded NATS: connect: %w", err)
	}
	a.nc = nc
	if cfg.NATSExpose != "" {
		a.log.Info("embedded NATS serving clients", "url", ns.ClientURL())
	}
	return nil
}

// orNone maps a bound of the settings, where 0 means none, to the
// packages' convention, where 0 means the default and a negative none.
func orNone(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// natsFatal is the embedded NATS server's logger: it keeps the first fatal
// error (e.g. its client port is taken) and drops everything else.
type natsFatal chan string

func (f natsFatal) Fatalf(format string, v ...any) {
	select {
	case f <- fmt.Sprintf(format, v...):
	default:
	}
}
func (natsFatal) Noticef(string, ...any) {}
func (natsFatal) Warnf(string, ...any)   {}
func (natsFatal) Errorf(string, ...any)  {}
func (natsFatal) Debugf(string, ...any)  {}
func (natsFatal) Tracef(string, ...any)  {}

// addr returns the HTTP listen address.
func (a *app) addr() string { return a.ln.Addr().String() }

// shutdown stops accepting requests, closes every peer (which flushes open
// bites into the pipeline), closes the pipeline (which publishes them), and
// closes NATS, within ctx.
func (a *app) shutdown(ctx context.Context) error {
	var errs []error
	if a.natsRTT != nil {
		a.natsRTT.Stop()
	}
	if a.srv != nil {
		if err := a.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if a.msrv != nil {
		if err := a.msrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("metrics http: %w", err))
		}
	}
	// Their sockets are hijacked: the HTTP shutdown left them.
	if a.sylk != nil {
		a.sylk.Close()
	}
	if a.arb != nil {
		a.arb.Close()
	}
	if a.devices != nil {
		if err := a.devices.Close(); err != nil {
			errs = append(errs, fmt.Errorf("device signalling: %w", err))
		}
	}
	if a.rooms != nil {
		if err := a.rooms.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	// After the rooms: the end of their tracks is still relayed.
	if a.cluster != nil {
		a.cluster.Close()
	}
	if a.turnSrv != nil {
		if err := a.turnSrv.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if a.pipe != nil {
		if err := a.pipe.Close(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if a.nc != nil {
		a.nc.Close()
	}
	if a.ns != nil {
		a.ns.Shutdown()
		a.ns.WaitForShutdown()
	}
	if a.jsDir != "" {
		if err := os.RemoveAll(a.jsDir); err != nil {
			errs = append(errs, fmt.Errorf("JetStream store: %w", err))
		}
	}
	return errors.Join(errs...)
}
