// Command router is the Beep media router: a WebRTC selective forwarding
// unit for voice that cuts speech into bites and publishes them on NATS.
//
// Configuration comes from the environment, with a .env file filling in
// what the environment lacks; see README.md for every setting.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/joho/godotenv"
)

func main() { os.Exit(run()) }

func run() int {
	dev := flag.Bool("dev", false, "local demo: listen on :8080, embedded NATS, allow-all permissions, identity from query parameters; refuses PERMISSIONS_HOST and AUTH_JWT_PUBLIC_KEY")
	devTLS := flag.Bool("dev-tls", false, "with -dev: serve HTTPS and WSS with a self-signed certificate for this host's names and addresses (its SHA-256 fingerprint is logged), so browsers on other machines may use the microphone")
	printPipeline := flag.Bool("print-pipeline", false, "print the default pipeline YAML (every stage and setting with its default, commented) and exit")
	envFile := flag.String("env-file", ".env", "file of KEY=value lines that fill in settings the environment lacks; a missing .env is ignored, a missing file named with -env-file is an error")
	flag.Parse()
	envFileGiven := false
	flag.Visit(func(f *flag.Flag) { envFileGiven = envFileGiven || f.Name == "env-file" })

	// godotenv.Load never overrides a variable the environment already has.
	if err := godotenv.Load(*envFile); err != nil && (envFileGiven || !errors.Is(err, fs.ErrNotExist)) {
		fail("-env-file %s: %v", *envFile, err)
		return 2
	}
	cfg, err := loadConfig(os.Getenv, *dev)
	if err != nil {
		fail("invalid settings: %v", err)
		return 2
	}
	cfg.DevTLS = *devTLS
	if err := checkDevTLS(cfg); err != nil {
		fail("%v", err)
		return 2
	}
	if *printPipeline {
		b, err := defaultPipeline(registry())
		if err == nil {
			_, err = os.Stdout.Write(b)
		}
		if err != nil {
			fail("%v", err)
			return 1
		}
		return 0
	}

	log := newLogger(cfg)
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	// SIGHUP re-reads the TLS certificate and the Sylk accounts file; one
	// during the start is handled once the router serves.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	a, err := start(cfg, log, registry())
	if err != nil {
		fail("%v", err)
		return 1
	}
	code := 0
	for running := true; running; {
		select {
		case <-hup:
			_ = a.reload() // logged; what was in use stays
		case <-ctx.Done():
			log.Info("shutting down")
			running = false
		case err := <-a.served:
			if !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server failed", "err", err)
				code = 1
			}
			running = false
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := a.shutdown(sctx); err != nil {
		log.Error("unclean shutdown", "err", err)
		code = 1
	}
	log.Info("stopped")
	return code
}

// fail prints a start-up error as one line, "router: <cause>": the errors
// of several settings, or a multi-line YAML error, are joined with "; ".
func fail(format string, v ...any) {
	var parts []string
	for _, l := range strings.Split(fmt.Sprintf(format, v...), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	fmt.Fprintf(os.Stderr, "router: %s\n", strings.Join(parts, "; "))
}

func newLogger(cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
