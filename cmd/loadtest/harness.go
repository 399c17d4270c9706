package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/mux"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/metrics"
	"github.com/beepvoice/router/permissions"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
	"github.com/beepvoice/router/signal/beep"
	"github.com/beepvoice/router/stages"
)

// harness is the router's media path wired in-process from its packages the
// way cmd/router/app.go wires it (embedded NATS, the default pipeline with
// its Prometheus stage timing, room.Manager, the Beep /connect and /join
// endpoints, /metrics, permissions allow-all, ICE on 127.0.0.1 only,
// cmd/router's default timeouts), plus a loopback debug listener with pprof
// and a /stats endpoint. It leaves out configuration parsing, device
// signalling (/subscribe, /user), plugins, origin checks, the join rate and
// the per-conversation limits, which are not on the media path. cmd/router has no pprof listener: the harness
// is how its hot path is profiled.
type harness struct {
	ns       *server.Server
	nc       *nats.Conn
	pipe     *pipeline.Pipeline
	rooms    *room.Manager
	srv, dbg *http.Server
	ln, dln  net.Listener
	served   chan error

	// proc times each published packet through the pipeline (the
	// forwarder's fan-out to every slot included), from when the track's
	// reader has it until the last slot's write returns.
	procMu sync.Mutex
	proc   *hist
}

// timedSink wraps the pipeline to time every packet of every track.
type timedSink struct {
	room.Sink
	h *harness
}

func (s timedSink) Open(t *room.Track) (rtc.TrackSink, error) {
	ts, err := s.Sink.Open(t)
	if err != nil {
		return nil, err
	}
	return timedTrack{ts, s.h}, nil
}

type timedTrack struct {
	rtc.TrackSink
	h *harness
}

func (t timedTrack) WriteRTP(raw []byte, arrival time.Time) error {
	err := t.TrackSink.WriteRTP(raw, arrival)
	d := time.Since(arrival)
	t.h.procMu.Lock()
	t.h.proc.add(d)
	t.h.procMu.Unlock()
	return err
}

// startHarness starts the harness router on 127.0.0.1 (HTTP on an ephemeral
// port; UDP on udpPort when positive, else an ephemeral port per peer).
func startHarness(log *slog.Logger, udpPort int) (h *harness, err error) {
	h = &harness{served: make(chan error, 2), proc: newHist()}
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = h.close(ctx)
			h = nil
		}
	}()
	ns, err := server.NewServer(&server.Options{ServerName: "beep-router", NoSigs: true, NoLog: true, DontListen: true})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS: not ready in 10s")
	}
	h.ns = ns
	if h.nc, err = nats.Connect("", nats.InProcessServer(ns)); err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}

	reg := pipeline.NewRegistry()
	stages.Register(reg)
	pc, err := reg.Config(stages.Default...)
	if err != nil {
		return nil, err
	}
	promReg := metrics.NewRegistry()
	if h.pipe, err = reg.Build(pc, pipeline.Env{NATS: h.nc, Logger: log, Metrics: promReg}); err != nil {
		return nil, err
	}
	h.rooms, err = room.New(room.Config{
		Media: rtc.Config{
			ICEIPs:              []net.IP{net.IPv4(127, 0, 0, 1)},
			UDPPort:             udpPort,
			SharedSocket:        true, // cmd/router's default (ICE_SOCKETS=shared)
			ConnectTimeout:      30 * time.Second,
			DisconnectedTimeout: 5 * time.Second,
			FailedTimeout:       10 * time.Second,
			KeepaliveInterval:   2 * time.Second,
		},
		Sink:   timedSink{h.pipe, h},
		Mixing: h.pipe.Mixing(),
		Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if err := metrics.Register(promReg, metrics.Sources{Rooms: h.rooms, Pipeline: h.pipe, NATSConnected: h.nc.IsConnected}); err != nil {
		return nil, err
	}
	r := mux.NewRouter()
	r.Handle("/metrics", metrics.Handler(promReg, func() error { return nil }))
	beep.New(beep.Config{
		Rooms:        h.rooms,
		Permissions:  permissions.AllowAll{},
		Claims:       claim.FromHeader,
		Logger:       log,
		OfferTimeout: 10 * time.Second,
		MaxMessage:   65536,
	}).Register(r)
	if h.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	h.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
	go func() { h.served <- h.srv.Serve(h.ln) }()

	dm := http.NewServeMux()
	dm.HandleFunc("/debug/pprof/", pprof.Index)
	dm.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	dm.HandleFunc("/debug/pprof/profile", pprof.Profile)
	dm.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	dm.HandleFunc("/debug/pprof/trace", pprof.Trace)
	dm.HandleFunc("/stats", h.stats)
	if h.dln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	h.dbg = &http.Server{Handler: dm, ReadHeaderTimeout: 10 * time.Second}
	go func() { h.served <- h.dbg.Serve(h.dln) }()
	return h, nil
}

// URL is the harness router's base URL.
func (h *harness) URL() string { return "http://" + h.ln.Addr().String() }

// DebugURL is the base URL of the pprof and /stats listener.
func (h *harness) DebugURL() string { return "http://" + h.dln.Addr().String() }

// harnessStats is what /stats answers.
type harnessStats struct {
	Goroutines    int    `json:"goroutines"`
	HeapAlloc     uint64 `json:"heap_alloc"`
	HeapInuse     uint64 `json:"heap_inuse"`
	StackInuse    uint64 `json:"stack_inuse"`
	Sys           uint64 `json:"sys"`
	Peers         int    `json:"peers"`
	Users         int    `json:"users"`
	Conversations int    `json:"conversations"`
	// Processing time of published packets since the last ?reset=1, in ms.
	Processing struct {
		Packets uint64  `json:"packets"`
		P50     float64 `json:"p50"`
		P99     float64 `json:"p99"`
		Max     float64 `json:"max"`
	} `json:"processing_ms"`
}

// stats answers /stats; ?gc=1 collects garbage first, so that heap figures
// are live memory; ?reset=1 restarts the processing-time histogram.
func (h *harness) stats(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		runtime.GC()
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := h.rooms.Stats()
	out := harnessStats{
		Goroutines: runtime.NumGoroutine(),
		HeapAlloc:  ms.HeapAlloc, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse, Sys: ms.Sys,
		Peers: st.Peers, Users: st.Users, Conversations: st.Conversations,
	}
	h.procMu.Lock()
	out.Processing.Packets = h.proc.n
	out.Processing.P50 = h.proc.quantile(0.5) / 1000
	out.Processing.P99 = h.proc.quantile(0.99) / 1000
	out.Processing.Max = h.proc.quantile(1) / 1000
	if r.URL.Query().Get("reset") == "1" {
		h.proc = newHist()
	}
	h.procMu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// close stops the harness the way cmd/router shuts down.
func (h *harness) close(ctx context.Context) error {
	var errs []error
	if h.srv != nil {
		errs = append(errs, h.srv.Shutdown(ctx))
	}
	if h.dbg != nil {
		errs = append(errs, h.dbg.Shutdown(ctx))
	}
	if h.rooms != nil {
		errs = append(errs, h.rooms.Close(ctx))
	}
	if h.pipe != nil {
		errs = append(errs, h.pipe.Close(ctx))
	}
	if h.nc != nil {
		h.nc.Close()
	}
	if h.ns != nil {
		h.ns.Shutdown()
		h.ns.WaitForShutdown()
	}
	return errors.Join(errs...)
}

// serveRouter is the -serve-router mode: it runs the harness until SIGINT or
// SIGTERM and logs (JSON, on stderr) the lines the load tool waits for:
// "pprof listening" and then "router listening", as cmd/router does.
func serveRouter(udpPort int) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h, err := startHarness(log, udpPort)
	if err != nil {
		log.Error("harness did not start", "err", err)
		return 1
	}
	log.Info("pprof listening", "addr", h.dln.Addr().String())
	log.Info("router listening", "addr", h.ln.Addr().String())
	code := 0
	select {
	case <-ctx.Done():
	case err := <-h.served:
		log.Error("http server failed", "err", err)
		code = 1
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.close(sctx); err != nil {
		log.Error("unclean shutdown", "err", err)
		code = 1
	}
	return code
}
