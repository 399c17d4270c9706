package testutil

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATS is an embedded NATS server for tests. It keeps its loopback port
// (and, with JetStream, its store) across Stop and Start, so that a test can
// take NATS away and bring it back; the test's cleanup stops it.
type NATS struct {
	t    testing.TB
	opts server.Options
	s    *server.Server
}

// NewNATS prepares a server on a free loopback port without starting it;
// tune adjusts its options (JetStream, DontListen, …).
func NewNATS(t testing.TB, tune ...func(*server.Options)) *NATS {
	t.Helper()
	_, port, err := net.SplitHostPort(FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	n := &NATS{t: t, opts: server.Options{Host: "127.0.0.1", Port: p, NoLog: true, NoSigs: true}}
	for _, f := range tune {
		f(&n.opts)
	}
	if n.opts.JetStream && n.opts.StoreDir == "" {
		n.opts.StoreDir = t.TempDir()
	}
	t.Cleanup(n.Stop)
	return n
}

// StartNATS returns a started NewNATS.
func StartNATS(t testing.TB, tune ...func(*server.Options)) *NATS {
	t.Helper()
	n := NewNATS(t, tune...)
	n.Start()
	return n
}

// Start starts the server and waits until it takes connections.
func (n *NATS) Start() {
	n.t.Helper()
	opts := n.opts
	s, err := server.NewServer(&opts)
	if err != nil {
		n.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("nats server not ready")
	}
	n.s = s
}

// Stop shuts the server down, if it runs, and waits until it has.
func (n *NATS) Stop() {
	if n.s != nil {
		n.s.Shutdown()
		n.s.WaitForShutdown()
		n.s = nil
	}
}

// URL is the server's client URL, also while it is stopped.
func (n *NATS) URL() string {
	return "nats://" + net.JoinHostPort(n.opts.Host, strconv.Itoa(n.opts.Port))
}

// Server is the running server (nil while stopped), for in-process
// connections.
func (n *NATS) Server() *server.Server { return n.s }

// ConnectNATS connects to the NATS server at url, without reconnecting:
// a test that takes the server away sees the connection fail. tb's cleanup
// closes it.
func ConnectNATS(tb testing.TB, url string) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(url, nats.NoReconnect())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// JetStream turns on JetStream, stored in a temporary directory.
func JetStream(o *server.Options) { o.JetStream = true }
