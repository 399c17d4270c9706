package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/beepvoice/router/plugins/protocol"
)

// killGrace is how long go-plugin's Kill may take (it asks the plugin to
// exit, then waits) before the process is killed outright.
const killGrace = 5 * time.Second

// proc is one run of the plugin program.
type process struct {
	st     *Stage
	client *plugin.Client
	rpc    *protocol.Client
	stream protocol.Plugin_StreamClient
	cancel context.CancelFunc // cancels the stream
	pid    int

	failOnce sync.Once
	failed   chan struct{} // closed on the first failure
	err      error         // why; set before failed is closed

	recvDone chan struct{} // the receive loop ended
	monDone  chan struct{} // the monitor ended
	eof      bool          // the plugin ended the stream itself; read after recvDone
}

// errStopped is the failure of a process the stage stopped on purpose.
var errStopped = errors.New("stopped")

// start launches the plugin, checks its versions, configures it and opens
// its stream.
func (st *Stage) start() (*process, error) {
	st.stats.starts.Add(1)
	cmd := exec.Command(st.s.Path, st.s.Args...)
	cmd.Env = append(os.Environ(), st.s.Env...)
	setProcAttr(cmd)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  protocol.Handshake,
		Plugins:          protocol.PluginSet(nil),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		StartTimeout:     st.s.StartTimeout.D(),
		Logger:           hclog.New(&hclog.LoggerOptions{Level: hclog.Off, Output: io.Discard}),
		Stderr:           newLogWriter(st.log, "stderr"),
		SyncStdout:       newLogWriter(st.log, "stdout"),
		SyncStderr:       newLogWriter(st.log, "stderr"),
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(protocol.MaxMessageSize), grpc.MaxCallSendMsgSize(protocol.MaxMessageSize))},
	})
	p, err := st.connect(client)
	if err != nil {
		st.stats.failures.Add(1)
		killClient(client, 0)
		return nil, fmt.Errorf("plugin %s (%s): %w", st.name, st.s.Path, err)
	}
	st.pid.Store(int64(p.pid))
	st.log.Info("plugin started", "pid", p.pid, "packets", st.wantPackets.Load(), "bites", st.wantBites.Load())
	go p.receive()
	go p.monitor()
	return p, nil
}

// connect does the handshake, Configure and opens the stream.
func (st *Stage) connect(client *plugin.Client) (*process, error) {
	cp, err := client.Client()
	if err != nil {
		if strings.Contains(strings.ToLower(err.Error()), "incompatible api version") {
			return nil, fmt.Errorf("refused: the plugin was built for another plugin protocol version "+
				"(this router speaks protocol %d); rebuild it against this router's plugins/sdk: %w",
				protocol.ProtocolVersion, err)
		}
		return nil, fmt.Errorf("start: %w", err)
	}
	raw, err := cp.Dispense(protocol.PluginName)
	if err != nil {
		return nil, fmt.Errorf("dispense: %w", err)
	}
	rpc, ok := raw.(*protocol.Client)
	if !ok {
		return nil, fmt.Errorf("dispense: unexpected %T", raw)
	}
	pid := 0
	if rc := client.ReattachConfig(); rc != nil {
		pid = rc.Pid
	}
	ctx, cancel := context.WithTimeout(context.Background(), st.s.StartTimeout.D())
	defer cancel()
	resp, err := rpc.Configure(ctx, &protocol.ConfigureRequest{
		ApiVersion:    protocol.APIVersion,
		Name:          st.name,
		Config:        st.config,
		Conversations: st.s.Conversations,
	})
	if err != nil {
		return nil, fmt.Errorf("configure: %w", err)
	}
	if v := resp.ApiVersion; v < protocol.MinAPIVersion || v > protocol.APIVersion {
		return nil, fmt.Errorf("refused: plugin %q speaks plugin API %d, this router supports %d to %d; "+
			"rebuild the plugin against this router's plugins/sdk", resp.Plugin, v, protocol.MinAPIVersion, protocol.APIVersion)
	}
	if !resp.Packets && !resp.Bites {
		return nil, fmt.Errorf("refused: plugin %q consumes neither packets nor bites", resp.Plugin)
	}
	sctx, scancel := context.WithCancel(context.Background())
	stream, err := rpc.Stream(sctx)
	if err != nil {
		scancel()
		return nil, fmt.Errorf("open stream: %w", err)
	}
	st.wantPackets.Store(resp.Packets)
	st.wantBites.Store(resp.Bites)
	return &process{
		st: st, client: client, rpc: rpc, stream: stream, cancel: scancel, pid: pid,
		failed: make(chan struct{}), recvDone: make(chan struct{}), monDone: make(chan struct{}),
	}, nil
}

// fail records the first failure and breaks the stream, which unblocks
// sends and the receive loop.
func (p *process) fail(err error) {
	p.failOnce.Do(func() {
		p.err = err
		close(p.failed)
		p.cancel()
	})
}

// cause returns why p failed, if the monitor or the receive loop found out
// first (a send then fails only because the stream was broken), else err.
func (p *process) cause(err error) error {
	select {
	case <-p.failed:
		if p.err != nil && !errors.Is(p.err, errStopped) {
			return p.err
		}
	default:
	}
	return err
}

// receive publishes the plugin's results until the stream ends.
func (p *process) receive() {
	defer close(p.recvDone)
	var batch protocol.PluginBatch
	for {
		batch.Reset()
		if err := p.stream.RecvMsg(&batch); err != nil {
			if errors.Is(err, io.EOF) {
				p.eof = true
				p.fail(errors.New("plugin ended its stream"))
				return
			}
			p.fail(fmt.Errorf("receive: %w", err))
			return
		}
		for _, r := range batch.Results {
			p.st.publish(r)
		}
	}
}

// monitor health-checks the plugin and watches for blocked sends.
func (p *process) monitor() {
	defer close(p.monDone)
	st := p.st
	health := grpc_health_v1.NewHealthClient(p.rpc.Conn)
	t := time.NewTicker(st.s.HealthInterval.D())
	defer t.Stop()
	for {
		select {
		case <-p.failed:
			return
		case <-t.C:
		}
		if p.client.Exited() {
			p.fail(errors.New("process exited"))
			return
		}
		if since := st.sendingSince.Load(); since != 0 {
			if d := time.Since(time.Unix(0, since)); d > st.s.StallTimeout.D() {
				p.fail(fmt.Errorf("hung: a send has been blocked for %v (the plugin is not reading)", d.Round(time.Millisecond)))
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), st.s.StallTimeout.D())
		_, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: plugin.GRPCServiceName})
		cancel()
		if err != nil {
			select {
			case <-p.failed: // broken by a failure elsewhere, or stopped
			default:
				p.fail(fmt.Errorf("health check: %w", err))
			}
			return
		}
	}
}

// shutdown ends the process: gracefully (the plugin ended its stream) or
// not (it failed or hung), and waits for its goroutines.
func (p *process) shutdown(graceful bool) {
	p.fail(errStopped)
	<-p.recvDone
	<-p.monDone
	if graceful {
		killClient(p.client, killGrace)
	} else {
		killClient(p.client, 0)
	}
	p.st.pid.CompareAndSwap(int64(p.pid), 0)
}

// killClient stops the plugin process with go-plugin's Kill (which asks the
// plugin to exit and waits for it), killing it outright after grace: Kill
// alone can wait forever on a plugin that is stopped or hung.
func killClient(c *plugin.Client, grace time.Duration) {
	pid := 0
	if rc := c.ReattachConfig(); rc != nil {
		pid = rc.Pid
	}
	if grace == 0 && pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	done := make(chan struct{})
	go func() {
		c.Kill()
		close(done)
	}()
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-done:
			return
		case <-t.C:
			if pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	<-done
}
