// Package protocol is the wire contract between the router and its plugins:
// the gRPC service generated from plugin.proto, the go-plugin handshake and
// the go-plugin glue that both sides share.
//
// The host side lives in package plugins; plugin authors use package sdk and
// need not import this package.
package protocol

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative plugin.proto

import (
	"context"
	"errors"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// ProtocolVersion is go-plugin's handshake protocol version. It changes when
// plugin.proto changes incompatibly; go-plugin refuses a plugin built for
// another version before any call.
const ProtocolVersion = 1

// APIVersion is the revision of plugin.proto within ProtocolVersion,
// exchanged in Configure. Revisions only add fields.
const APIVersion = 1

// MinAPIVersion is the oldest plugin API revision the host accepts.
const MinAPIVersion = 1

// PluginName is the name the plugin is dispensed under.
const PluginName = "beep"

// MaxMessageSize bounds one gRPC message in either direction.
const MaxMessageSize = 16 << 20

// Handshake is the go-plugin handshake. The magic cookie keeps a plugin
// binary from being run by hand as if it were a normal program.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "BEEP_ROUTER_PLUGIN",
	MagicCookieValue: "d6f3c1f2-beep-voice-router-plugin",
}

// GRPCPlugin is the go-plugin Plugin for both sides: the plugin sets Impl,
// the host dispenses a PluginClient.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the plugin's implementation; nil on the host.
	Impl PluginServer
}

// GRPCServer registers the plugin's service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("protocol: no plugin server")
	}
	RegisterPluginServer(s, p.Impl)
	return nil
}

// GRPCClient returns a Client on the connection go-plugin made.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &Client{PluginClient: NewPluginClient(c), Conn: c}, nil
}

// Client is what the host dispenses: the generated client and its
// connection (for health checks).
type Client struct {
	PluginClient
	Conn *grpc.ClientConn
}

// PluginSet returns the plugin map for plugin.ClientConfig or ServeConfig.
func PluginSet(server PluginServer) plugin.PluginSet {
	return plugin.PluginSet{PluginName: &GRPCPlugin{Impl: server}}
}
