package testutil

import (
	"context"
	"net"
	"strconv"
	"strings"
	"sync"
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
	if !n.start() {
		n.t.FailNow()
	}
}

// start starts the server and waits until it takes connections; it
// reports a failure with Errorf (it may run on another goroutine than the
// test's).
func (n *NATS) start() bool {
	opts := n.opts
	s, err := server.NewServer(&opts)
	if err != nil {
		n.t.Errorf("nats server: %v", err)
		return false
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		n.t.Errorf("nats server %s not ready", opts.ServerName)
		return false
	}
	n.s = s
	return true
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

// StartNATSCluster starts n servers on loopback routed to each other as one
// NATS cluster with JetStream (each its own store and server name), and
// waits until every server has routes to the others and JetStream has a
// meta leader that every server follows. tune adjusts each server's options
// (after the cluster's are set). Each server can be stopped and started
// again on its ports and store, and rejoins the cluster then.
func StartNATSCluster(t testing.TB, n int, tune ...func(*server.Options)) []*NATS {
	t.Helper()
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range n {
		_, port, err := net.SplitHostPort(FreeAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		if ports[i], err = strconv.Atoi(port); err != nil {
			t.Fatal(err)
		}
		routes[i] = "nats://127.0.0.1:" + port
	}
	var nodes []*NATS
	for i := range n {
		nodes = append(nodes, NewNATS(t, func(o *server.Options) {
			o.ServerName = "n" + strconv.Itoa(i+1)
			o.JetStream = true
			o.Cluster.Name = "beep-test"
			o.Cluster.Host = "127.0.0.1"
			o.Cluster.Port = ports[i]
			o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
			for _, f := range tune {
				f(o)
			}
		}))
	}
	// The servers find each other only once all run: start them together.
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node.start()
		}()
	}
	wg.Wait()
	for _, node := range nodes {
		if node.s == nil {
			t.FailNow()
		}
	}
	WaitNATSCluster(t, nodes)
	return nodes
}

// WaitNATSCluster waits until the running servers of nodes (a cluster of
// StartNATSCluster) are routed to each other and follow one JetStream meta
// leader: JetStream is usable from any of them.
func WaitNATSCluster(t testing.TB, nodes []*NATS) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var running []*server.Server
	for _, node := range nodes {
		if node.s != nil {
			running = append(running, node.s)
		}
	}
	err := Until(ctx, func() bool {
		leaders := 0
		for _, s := range running {
			if s.NumRoutes() < len(running)-1 || !s.JetStreamIsCurrent() {
				return false
			}
			if s.JetStreamIsLeader() {
				leaders++
			}
		}
		return leaders == 1
	})
	if err != nil {
		t.Fatalf("NATS cluster of %d servers not formed in 30s", len(running))
	}
}
