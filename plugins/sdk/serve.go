package sdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/beepvoice/router/plugins/protocol"
)

// outboxSize is how many results may wait for the host.
const outboxSize = 4096

// Serve runs the plugin until the host is done with it. Call it from main.
// Run by hand, outside a router, it prints a short explanation and exits.
func Serve(p Plugin) {
	if p.Packet == nil && p.Bite == nil {
		logger.Error("cannot serve", "err", errNoHandler)
		os.Exit(2)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: protocol.Handshake,
		Plugins:         protocol.PluginSet(NewServer(p)),
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			opts = append(opts, grpc.MaxRecvMsgSize(protocol.MaxMessageSize), grpc.MaxSendMsgSize(protocol.MaxMessageSize))
			return grpc.NewServer(opts...)
		},
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "go-plugin", Level: hclog.Warn, Output: stderr, JSONFormat: true,
		}),
	})
}

// Server implements the plugin side of the protocol for p. Serve uses it;
// it is exported for tests that run a plugin in-process.
type Server struct {
	protocol.UnimplementedPluginServer
	p Plugin

	mu      sync.Mutex
	session *Session
	stopped bool
}

// NewServer returns the protocol server for p.
func NewServer(p Plugin) *Server { return &Server{p: p} }

// Configure creates the session and calls the plugin's Configure.
func (sv *Server) Configure(_ context.Context, req *protocol.ConfigureRequest) (*protocol.ConfigureResponse, error) {
	if req.ApiVersion < protocol.MinAPIVersion {
		return nil, status.Errorf(codes.FailedPrecondition,
			"router speaks plugin API %d; this plugin needs at least %d: upgrade the router", req.ApiVersion, protocol.MinAPIVersion)
	}
	cfg := req.Config
	if len(cfg) == 0 {
		cfg = []byte("{}")
	}
	s := &Session{
		Name:          req.Name,
		Conversations: req.Conversations,
		Config:        cfg,
		Log:           logger,
		out:           newOutbox(),
	}
	if sv.p.Configure != nil {
		if err := sv.p.Configure(s); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "configure: %v", err)
		}
	}
	sv.mu.Lock()
	sv.session = s
	sv.mu.Unlock()
	return &protocol.ConfigureResponse{
		ApiVersion: protocol.APIVersion,
		Packets:    sv.p.Packet != nil,
		Bites:      sv.p.Bite != nil,
		Plugin:     sv.p.Name,
	}, nil
}

// Stream receives the host's batches and hands them to the plugin's
// handlers, and sends the plugin's results back.
func (sv *Server) Stream(stream protocol.Plugin_StreamServer) error {
	sv.mu.Lock()
	s := sv.session
	sv.mu.Unlock()
	if s == nil {
		return status.Error(codes.FailedPrecondition, "Stream before Configure")
	}
	sendDone := make(chan error, 1)
	go func() { sendDone <- s.out.run(stream) }()

	err := sv.receive(s, stream)
	sv.stop(s)
	s.out.close()
	sendErr := <-sendDone
	if err != nil {
		return err
	}
	return sendErr
}

// stop calls the plugin's Stop once.
func (sv *Server) stop(s *Session) {
	sv.mu.Lock()
	done := sv.stopped
	sv.stopped = true
	sv.mu.Unlock()
	if !done && sv.p.Stop != nil {
		sv.p.Stop(s)
	}
}

// receive dispatches batches until the host half-closes the stream (nil) or
// the stream breaks.
func (sv *Server) receive(s *Session, stream protocol.Plugin_StreamServer) error {
	streams := make(map[uint32]*Stream)
	var pkt Packet
	var batch protocol.HostBatch
	for {
		batch.Reset()
		if err := stream.RecvMsg(&batch); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("receive: %w", err)
		}
		if batch.Dropped > 0 {
			s.hostDropped.Add(batch.Dropped)
		}
		for _, o := range batch.Opened {
			streams[o.Id] = &Stream{ID: o.Id, Conversation: o.Conversation, User: o.User, Client: o.Client, Track: o.Track, SSRC: o.Ssrc}
		}
		if sv.p.Packet != nil {
			for _, bp := range batch.Packets {
				st := streams[bp.Stream]
				if st == nil {
					s.Log.Warn("packet of an unknown stream dropped", "stream", bp.Stream)
					continue
				}
				if err := pkt.RTP.Unmarshal(bp.Rtp); err != nil {
					s.Log.Warn("malformed RTP packet dropped", "stream", bp.Stream, "err", err)
					continue
				}
				pkt.Stream = st
				pkt.Raw = bp.Rtp
				pkt.Arrival = time.Unix(0, bp.Arrival)
				pkt.Level, pkt.HasLevel, pkt.Voice = uint8(bp.Level), bp.HasLevel, bp.Voice
				sv.p.Packet(s, &pkt)
			}
		}
		if sv.p.Bite != nil {
			for _, b := range batch.Bites {
				sv.p.Bite(s, &Bite{
					Conversation: b.Conversation, User: b.User, Client: b.Client, Track: b.Track,
					Seq: b.Seq, Start: time.Unix(0, b.Start), Duration: time.Duration(b.Duration),
					Format: b.Format, Data: b.Data,
				})
			}
		}
		for _, id := range batch.Closed {
			st := streams[id]
			if st == nil {
				continue
			}
			delete(streams, id)
			if sv.p.StreamEnd != nil {
				sv.p.StreamEnd(s, st)
			}
		}
	}
}

// outbox holds results until the sender goroutine streams them.
type outbox struct {
	mu      sync.Mutex
	closed  bool
	ch      chan *protocol.Result
	dropped atomic.Uint64
}

func newOutbox() *outbox { return &outbox{ch: make(chan *protocol.Result, outboxSize)} }

func (o *outbox) emit(r Result) {
	m := &protocol.Result{Subject: r.Subject, Conversation: r.Conversation, User: r.User, Kind: r.Kind, Data: r.Data}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		o.dropped.Add(1)
		return
	}
	select {
	case o.ch <- m:
	default:
		o.dropped.Add(1)
	}
}

// close ends the outbox: run sends what is queued and returns.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.closed {
		o.closed = true
		close(o.ch)
	}
}

// maxResultBatch bounds the results in one message.
const maxResultBatch = 64

// run streams results, batching those already waiting, until close.
func (o *outbox) run(stream protocol.Plugin_StreamServer) error {
	var failed error
	for r := range o.ch {
		if failed != nil {
			o.dropped.Add(1)
			continue // keep draining so that emit never sees a full queue forever
		}
		batch := &protocol.PluginBatch{Results: []*protocol.Result{r}}
	more:
		for len(batch.Results) < maxResultBatch {
			select {
			case r, ok := <-o.ch:
				if !ok {
					break more
				}
				batch.Results = append(batch.Results, r)
			default:
				break more
			}
		}
		if err := stream.Send(batch); err != nil {
			failed = fmt.Errorf("send results: %w", err)
			o.dropped.Add(uint64(len(batch.Results)))
		}
	}
	return failed
}
