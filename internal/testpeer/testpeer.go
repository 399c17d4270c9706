// Package testpeer holds pion clients for tests, on loopback: the pion API
// they share (pion's default codecs and interceptors, ICE on 127.0.0.1 over
// UDP4 only, without mDNS), gathering a local description, a Peer that
// records the tracks it receives, and the Media a Peer may send: a video
// fixture of internal/testmedia at 30 frames a second and Opus every 20 ms,
// answering keyframe requests as an encoder does.
//
// It imports none of the router's own packages (only internal/testmedia
// and internal/testutil), so that the tests of any of them, rtc's internal
// tests included, may use it. The signalling (how an offer reaches the
// router and its answer comes back) stays with each package's tests.
package testpeer

import (
	"context"
	"net"
	"os"
	"sync"
	"testing"

	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/internal/testmedia"
)

// Loopback is the one address test clients gather candidates on.
var Loopback = net.IPv4(127, 0, 0, 1)

// Settings returns the setting engine of a test client: ICE on 127.0.0.1
// (Loopback) over UDP4 only, without mDNS, so that its traffic never
// leaves loopback. Callers with a media engine of their own use it as it
// is; API uses it with pion's defaults.
func Settings() webrtc.SettingEngine {
	s := webrtc.SettingEngine{}
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(Loopback) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	return s
}

// NewAPI returns the pion API of a test client, like a browser's: pion's
// default codecs (VP8 first) and interceptors (NACK generator and
// responder, RTCP reports, TWCC), with Settings.
func NewAPI() (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterDefaultCodecs(); err != nil {
		return nil, err
	}
	reg := &interceptor.Registry{}
	if err := webrtc.RegisterDefaultInterceptors(m, reg); err != nil {
		return nil, err
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(Settings())), nil
}

// API is NewAPI for a test: an error fails tb.
func API(tb testing.TB) *webrtc.API {
	tb.Helper()
	api, err := NewAPI()
	if err != nil {
		tb.Fatal(err)
	}
	return api
}

// Gather sets d as pc's local description, waits until its candidates are
// gathered, or ctx ends, and returns the local SDP, candidates included.
func Gather(ctx context.Context, pc *webrtc.PeerConnection, d webrtc.SessionDescription) (string, error) {
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(d); err != nil {
		return "", err
	}
	select {
	case <-gathered:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	return pc.LocalDescription().SDP, nil
}

// Connected returns a channel closed once pc is connected. It takes pc's
// connection state handler.
func Connected(pc *webrtc.PeerConnection) <-chan struct{} {
	ch := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(ch) })
		}
	})
	return ch
}

// ThroughMarker returns pkts up to its last packet with the marker bit:
// the end of the last complete video frame (nil if there is none).
func ThroughMarker(pkts []*rtp.Packet) []*rtp.Packet {
	for i := len(pkts) - 1; i >= 0; i-- {
		if pkts[i].Marker {
			return pkts[:i+1]
		}
	}
	return nil
}

// VerifyTestMain is the TestMain of a package whose tests run pion
// clients: it runs the tests, fails the run if a goroutine (a peer, a
// track reader, a socket) outlives them, then removes the media fixtures
// of internal/testmedia and calls cleanup, in order. goleak exits the
// process, so the removal happens in its cleanup, not in a defer.
func VerifyTestMain(m *testing.M, cleanup ...func()) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		testmedia.Cleanup()
		for _, f := range cleanup {
			f()
		}
		os.Exit(code)
	}))
}
