package rtc

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/nack"
	"github.com/pion/interceptor/pkg/report"
	"github.com/pion/interceptor/pkg/twcc"
	"github.com/pion/logging"
	"github.com/pion/sdp/v3"
	"github.com/pion/stun"
	"github.com/pion/transport/v2"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/rtc/codec"
)

// apis is what every peer connection is made from: the settings (ICE,
// DTLS, buffers) and, without video (Beep's devices) and with it, the
// codecs and interceptors: the RFC 6464 audio level extension, NACK
// generator and responder, RTCP receiver reports (the generator and the
// reports only for peers that publish: see onDemand), and for video
// transport-wide congestion control feedback (TWCC) to publishers, so that
// their encoders adapt to the uplink.
//
// Each peer gets a pion API of its own from them (see api), cheap to make
// (pion copies the codecs per connection anyway), so that the transport.Net
// its ICE agent opens sockets through is its own: Close then releases every
// socket the agent opened, even one it opened while the peer was closing
// (pion v3's agent leaked those: TestCloseDuringNegotiationReleasesAll).
type apis struct {
	settings, videoSettings webrtc.SettingEngine
	audio, video            *webrtc.MediaEngine
	audioReg, videoReg      *interceptor.Registry
}

// api returns a pion API for one peer, with or without video, whose ICE
// opens its sockets through n and whose streams g bounds.
func (a *apis) api(video bool, n transport.Net, g *streamGuard) *webrtc.API {
	s, m, reg := a.settings, a.audio, a.audioReg // s: a copy
	if video {
		s, m, reg = a.videoSettings, a.video, a.videoReg
	}
	s.SetNet(n)
	g.inner = s.BufferFactory
	s.BufferFactory = g.buffer
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s))
}

// newAPIs builds the apis of cfg. It returns the UDP mux, if any, so that
// the Engine can close it.
func newAPIs(cfg *Config, c *counters, socks *sockets) (*apis, ice.UDPMux, error) {
	s, mux, err := newSettings(cfg, c, socks)
	if err != nil {
		return nil, nil, err
	}
	// One logger factory for all (pion makes one per API otherwise), and
	// one logger per scope (sharedLoggers).
	s.LoggerFactory = newSharedLoggers(logging.NewDefaultLoggerFactory())
	a := &apis{settings: s, videoSettings: s}
	// The video peers' buffers are larger (VideoTrackBuffer).
	a.videoSettings.BufferFactory = bufferFactory(cfg.VideoTrackBuffer, &c.overload)
	if a.audio, a.audioReg, err = newMedia(c, false, s.LoggerFactory); err == nil {
		a.video, a.videoReg, err = newMedia(c, true, s.LoggerFactory)
	}
	if err != nil {
		if mux != nil {
			_ = mux.Close()
		}
		return nil, nil, err
	}
	return a, mux, nil
}

// newMedia returns the codecs, header extensions and interceptors of a
// peer connection, with or without video. The interceptors log through
// logs: each would keep a logger factory's worth of its own otherwise.
func newMedia(c *counters, video bool, logs logging.LoggerFactory) (*webrtc.MediaEngine, *interceptor.Registry, error) {
	m := &webrtc.MediaEngine{}
	if err := codec.Register(m, video); err != nil {
		return nil, nil, err
	}
	if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, nil, fmt.Errorf("register audio level extension: %w", err)
	}

	reg := &interceptor.Registry{}
	// First in the chain, so that the NACK generator and the TWCC
	// interceptor write through it.
	reg.Add(rtcpCounterFactory{nacks: &c.nacksSent, twcc: &c.twccSent})
	gen, err := nack.NewGeneratorInterceptor(nack.GeneratorLog(logs.NewLogger("nack_generator")))
	if err != nil {
		return nil, nil, fmt.Errorf("nack generator: %w", err)
	}
	// For the pion egress path only (the direct path answers NACKs from
	// the up-tracks' caches): 64 packets of 20 ms keep 1.28 s of audio for
	// retransmission, far more than a NACK's round trip, and an eighth of
	// the memory of 512 (measured: 512 cost about 0.7 MiB per receiving
	// down-track).
	resp, err := nack.NewResponderInterceptor(nack.ResponderSize(pionNACKHistory), nack.ResponderLog(logs.NewLogger("nack_responder")))
	if err != nil {
		return nil, nil, fmt.Errorf("nack responder: %w", err)
	}
	reg.Add(onDemand{gen})
	// The responder answers only what its guard lets through: no packet
	// twice within nackWindow, and no more than the stream's own bytes
	// refill (nack.go).
	reg.Add(nackGuard{Factory: resp, refused: &c.nacksRefused})
	// Receiver reports only: down-tracks send their own sender reports
	// (report.go), since pion does not see what the direct path sends.
	rr, err := report.NewReceiverInterceptor(report.ReceiverLog(logs.NewLogger("receiver_interceptor")))
	if err != nil {
		return nil, nil, fmt.Errorf("rtcp receiver reports: %w", err)
	}
	reg.Add(onDemand{rr})
	if video {
		// TWCC rather than REMB: browsers' send-side estimator (GCC) takes
		// it, and it needs nothing but feedback from the router.
		if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.TransportCCURI}, webrtc.RTPCodecTypeVideo); err != nil {
			return nil, nil, fmt.Errorf("register transport-cc extension: %w", err)
		}
		tw, err := twcc.NewSenderInterceptor()
		if err != nil {
			return nil, nil, fmt.Errorf("twcc feedback: %w", err)
		}
		reg.Add(onDemand{tw})
	}
	return m, reg, nil
}

// newSettings returns the ICE, DTLS and buffer settings of cfg, shared by
// every peer connection, and the UDP mux if cfg has a port.
func newSettings(cfg *Config, c *counters, socks *sockets) (webrtc.SettingEngine, ice.UDPMux, error) {
	s := webrtc.SettingEngine{}
	// Before any socket opens (the UDP mux's below): none ever sends there.
	socks.forbidden = newForbiddenNets(cfg.ForbiddenNetworks)
	s.SetNet(socks)
	// A server has no use for mDNS, and its multicast would leave loopback.
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	s.SetICEBindingRequestHandler(followNomination)
	// pion's default 1 s DTLS retransmission made one connect in four take
	// a second longer under load; a lost handshake flight is resent sooner.
	s.SetDTLSRetransmissionInterval(100 * time.Millisecond)
	s.BufferFactory = bufferFactory(cfg.TrackBuffer, &c.overload)
	s.SetNetworkTypes(networkTypes(cfg.ICEIPs))
	if len(cfg.ICEIPs) > 0 {
		s.SetIPFilter(ipFilter(cfg.ICEIPs))
		if hasLoopback(cfg.ICEIPs) {
			s.SetIncludeLoopbackCandidate(true)
		}
	}
	if len(cfg.PublicIPs) > 0 {
		s.SetNAT1To1IPs(cfg.PublicIPs, webrtc.ICECandidateTypeHost)
	}
	s.SetICETimeouts(iceTimeouts(cfg))
	var mux ice.UDPMux
	if cfg.UDPPort > 0 || cfg.SharedSocket {
		opts := []ice.UDPMuxFromPortOption{
			ice.UDPMuxFromPortWithNetworks(iceNetworks(cfg.ICEIPs)...),
			ice.UDPMuxFromPortWithNet(socks),
		}
		if len(cfg.ICEIPs) > 0 {
			opts = append(opts, ice.UDPMuxFromPortWithIPFilter(ipFilter(cfg.ICEIPs)))
			if hasLoopback(cfg.ICEIPs) {
				opts = append(opts, ice.UDPMuxFromPortWithLoopback())
			}
		}
		mm, err := ice.NewMultiUDPMuxFromPort(max(cfg.UDPPort, 0), opts...)
		if err != nil {
			if cfg.UDPPort == 0 {
				return s, nil, fmt.Errorf("shared ICE socket: %w", err)
			}
			return s, nil, fmt.Errorf("UDP_PORT %d: %w", cfg.UDPPort, err)
		}
		s.SetICEUDPMux(mm)
		mux = mm
	}
	return s, mux, nil
}

// pion's ICE timeouts, which the router keeps unless configured.
const (
	defaultDisconnectedTimeout = 5 * time.Second
	defaultFailedTimeout       = 25 * time.Second
	defaultKeepaliveInterval   = 2 * time.Second
)

// iceTimeouts returns cfg's ICE timeouts, pion's defaults for those left
// zero (pion would take a zero it is given for "never"). With the direct
// ingress path the agent no longer sees the media arrive, only its own
// keepalives' answers. It pings when it has heard nothing for a keepalive
// interval, checked once an interval, so what it heard last can be two
// intervals old: the interval is at most a third of the disconnected
// timeout, lest the agent take a peer that sends media for gone.
func iceTimeouts(cfg *Config) (disconnected, failed, keepalive time.Duration) {
	disconnected, failed, keepalive = cfg.DisconnectedTimeout, cfg.FailedTimeout, cfg.KeepaliveInterval
	if disconnected <= 0 {
		disconnected = defaultDisconnectedTimeout
	}
	if failed <= 0 {
		failed = defaultFailedTimeout
	}
	if keepalive <= 0 {
		keepalive = defaultKeepaliveInterval
	}
	if !cfg.PionIngress {
		keepalive = min(keepalive, disconnected/3)
	}
	return disconnected, failed, keepalive
}

// followNomination makes the router, always the controlled ICE agent, use
// the candidate pair the client nominated last. pion keeps its first
// selected pair when a later nomination ranks lower by its own priorities,
// and judges the connection alive on that pair only; Chromium on a host with
// several addresses moves to another pair after connecting, and the router
// then dropped a working peer at the ICE timeout. RFC 8445 section 8.1.1:
// the controlling agent decides.
func followNomination(m *stun.Message, _, _ ice.Candidate, _ *ice.CandidatePair) bool {
	return m.Contains(stun.AttrUseCandidate)
}

func ipFilter(ips []net.IP) func(net.IP) bool {
	return func(ip net.IP) bool {
		for _, allowed := range ips {
			if allowed.Equal(ip) {
				return true
			}
		}
		return false
	}
}

func hasLoopback(ips []net.IP) bool {
	for _, ip := range ips {
		if ip.IsLoopback() {
			return true
		}
	}
	return false
}

// networkTypes gathers UDP on the address families of ips (both when ips is
// empty).
func networkTypes(ips []net.IP) []webrtc.NetworkType {
	v4, v6 := families(ips)
	var t []webrtc.NetworkType
	if v4 {
		t = append(t, webrtc.NetworkTypeUDP4)
	}
	if v6 {
		t = append(t, webrtc.NetworkTypeUDP6)
	}
	return t
}

func iceNetworks(ips []net.IP) []ice.NetworkType {
	v4, v6 := families(ips)
	var t []ice.NetworkType
	if v4 {
		t = append(t, ice.NetworkTypeUDP4)
	}
	if v6 {
		t = append(t, ice.NetworkTypeUDP6)
	}
	return t
}

func families(ips []net.IP) (v4, v6 bool) {
	if len(ips) == 0 {
		return true, true
	}
	for _, ip := range ips {
		if ip.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	return v4, v6
}

// ParseICEServers parses a comma list of STUN/TURN URLs such as
// "stun:stun.example.org:3478,turn:turn.example.org?transport=udp".
// username and credential apply to the TURN URLs.
func ParseICEServers(list, username, credential string) ([]webrtc.ICEServer, error) {
	var servers []webrtc.ICEServer
	for _, u := range strings.Split(list, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		parsed, err := stun.ParseURI(u)
		if err != nil {
			return nil, fmt.Errorf("ICE server %q: %w", u, err)
		}
		srv := webrtc.ICEServer{URLs: []string{u}}
		if parsed.Scheme == stun.SchemeTypeTURN || parsed.Scheme == stun.SchemeTypeTURNS {
			if username == "" || credential == "" {
				return nil, fmt.Errorf("ICE server %q: TURN needs a username and credential", u)
			}
			srv.Username, srv.Credential = username, credential
		}
		servers = append(servers, srv)
	}
	return servers, nil
}
