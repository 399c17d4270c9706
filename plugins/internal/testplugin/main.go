// Command testplugin is a plugin for the host's tests; -mode picks how it
// behaves (well or badly).
//
//	echo     reports each stream's packets when it ends, and each bite
//	latency  reports, per stream, the delay from the router's arrival stamp
//	         to the plugin's handler
//	crash    exits with status 3 after -after packets
//	hang     stops reading after -after packets
//	slow     sleeps -delay per packet
//	garbage  answers each packet with results the host must refuse, then
//	         one good one
//	old      speaks an older go-plugin protocol version
//	badapi   answers Configure with an API version from the future
//	refuse   refuses its configuration
//	nothing  consumes neither packets nor bites
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/beepvoice/router/plugins/protocol"
	"github.com/beepvoice/router/plugins/sdk"
)

func main() {
	mode := flag.String("mode", "echo", "behaviour")
	after := flag.Int("after", 10, "packets before crash or hang")
	delay := flag.Duration("delay", 10*time.Millisecond, "slow: delay per packet")
	flag.Parse()

	switch *mode {
	case "old":
		serveRaw(protocol.ProtocolVersion-1, &rawServer{api: protocol.APIVersion})
		return
	case "badapi":
		serveRaw(protocol.ProtocolVersion, &rawServer{api: protocol.APIVersion + 99})
		return
	case "nothing":
		serveRaw(protocol.ProtocolVersion, &rawServer{api: protocol.APIVersion, nothing: true})
		return
	}

	var p sdk.Plugin
	p.Name = "testplugin/" + *mode
	count := 0
	switch *mode {
	case "echo":
		p = echo()
	case "latency":
		p = latency()
	case "crash":
		p.Packet = func(s *sdk.Session, pk *sdk.Packet) {
			if count++; count >= *after {
				sdk.Logger().Error("crashing on purpose")
				os.Exit(3)
			}
		}
	case "hang":
		p.Packet = func(s *sdk.Session, pk *sdk.Packet) {
			if count++; count >= *after {
				s.Log.Warn("hanging on purpose")
				select {}
			}
		}
	case "slow":
		p.Packet = func(*sdk.Session, *sdk.Packet) { time.Sleep(*delay) }
	case "garbage":
		p.Packet = func(s *sdk.Session, pk *sdk.Packet) {
			conv := pk.Stream.Conversation
			for _, r := range []sdk.Result{
				{Subject: "bite", Conversation: conv, Data: []byte("spoofed")},
				{Subject: "a b", Data: []byte("x")},
				{Subject: "plugin.garbage.>", Data: []byte("x")},
				{Conversation: "not-mine", Data: []byte("x")},
				{Conversation: conv, User: "bad\r\nheader", Data: []byte("x")},
				{Conversation: conv, Data: make([]byte, 2<<20)},
			} {
				s.Emit(r)
			}
			s.Emit(sdk.Result{Conversation: conv, User: pk.Stream.User, Kind: "event", Data: []byte("good")})
		}
	case "refuse":
		p = echo()
		p.Configure = func(*sdk.Session) error { return fmt.Errorf("refusing on purpose") }
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
	sdk.Serve(p)
}

// echo reports what it received, so that tests can check it.
func echo() sdk.Plugin {
	type stats struct {
		n, bytes          int
		firstSeq, lastSeq uint16
		levels            int
	}
	streams := map[uint32]*stats{}
	var cfg struct {
		Subject string `json:"subject"`
		Hello   string `json:"hello"`
	}
	return sdk.Plugin{
		Name: "testplugin/echo",
		Configure: func(s *sdk.Session) error {
			if err := s.DecodeConfig(&cfg); err != nil {
				return err
			}
			sdk.Logger().Info("configured", "hello", cfg.Hello, "conversations", strings.Join(s.Conversations, ","))
			fmt.Fprintln(os.Stderr, "a plain stderr line")
			return nil
		},
		Packet: func(s *sdk.Session, p *sdk.Packet) {
			st := streams[p.Stream.ID]
			if st == nil {
				st = &stats{firstSeq: p.RTP.SequenceNumber}
				streams[p.Stream.ID] = st
			}
			st.n++
			st.bytes += len(p.RTP.Payload)
			st.lastSeq = p.RTP.SequenceNumber
			if p.HasLevel {
				st.levels++
			}
		},
		Bite: func(s *sdk.Session, b *sdk.Bite) {
			_ = s.EmitJSON(sdk.Result{Subject: cfg.Subject, Conversation: b.Conversation, User: b.User, Kind: "bite"},
				map[string]any{"seq": b.Seq, "bytes": len(b.Data), "format": b.Format, "duration_ms": b.Duration.Milliseconds()})
		},
		StreamEnd: func(s *sdk.Session, st *sdk.Stream) {
			x := streams[st.ID]
			if x == nil {
				x = &stats{}
			}
			delete(streams, st.ID)
			_ = s.EmitJSON(sdk.Result{Subject: cfg.Subject, Conversation: st.Conversation, User: st.User, Kind: "stream"},
				map[string]any{"track": st.Track, "client": st.Client, "ssrc": st.SSRC, "packets": x.n, "bytes": x.bytes,
					"first_seq": x.firstSeq, "last_seq": x.lastSeq, "levels": x.levels, "host_dropped": s.HostDropped()})
		},
		Stop: func(s *sdk.Session) {
			_ = s.EmitJSON(sdk.Result{Subject: cfg.Subject, Kind: "stop"}, map[string]any{"open_streams": len(streams), "pid": os.Getpid()})
		},
	}
}

// latency measures the delay from the router's arrival stamp to the
// handler, per stream.
func latency() sdk.Plugin {
	type acc struct {
		n        int
		sum, max time.Duration
	}
	streams := map[uint32]*acc{}
	return sdk.Plugin{
		Name: "testplugin/latency",
		Packet: func(s *sdk.Session, p *sdk.Packet) {
			a := streams[p.Stream.ID]
			if a == nil {
				a = &acc{}
				streams[p.Stream.ID] = a
			}
			d := time.Since(p.Arrival)
			a.n++
			a.sum += d
			a.max = max(a.max, d)
		},
		StreamEnd: func(s *sdk.Session, st *sdk.Stream) {
			a := streams[st.ID]
			if a == nil {
				a = &acc{}
			}
			delete(streams, st.ID)
			_ = s.EmitJSON(sdk.Result{Conversation: st.Conversation, Kind: "latency"},
				map[string]any{"packets": a.n, "sum_ns": a.sum.Nanoseconds(), "max_ns": a.max.Nanoseconds()})
		},
	}
}

// rawServer is a protocol server without the SDK, for misbehaviour the SDK
// does not allow.
type rawServer struct {
	protocol.UnimplementedPluginServer
	api     uint32
	nothing bool
}

func (r *rawServer) Configure(context.Context, *protocol.ConfigureRequest) (*protocol.ConfigureResponse, error) {
	return &protocol.ConfigureResponse{ApiVersion: r.api, Packets: !r.nothing, Plugin: "testplugin/raw"}, nil
}

func (r *rawServer) Stream(s protocol.Plugin_StreamServer) error {
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

func serveRaw(version uint, srv protocol.PluginServer) {
	hs := protocol.Handshake
	hs.ProtocolVersion = version
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: hs,
		Plugins:         protocol.PluginSet(srv),
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
