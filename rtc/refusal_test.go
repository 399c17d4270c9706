package rtc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/rtp"
	"github.com/pion/transport/v2"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testpeer"
)

// Every test here keeps its traffic on 127.0.0.1. Where the router is
// asked to reach other addresses, a socket wrapper counts the attempt and
// refuses it before any system call.

var loopback4 = []net.IP{net.IPv4(127, 0, 0, 1)}

// loopbackClient returns a pion peer connection that offers Opus and
// gathers on 127.0.0.1 only; with profiles, it offers only those SRTP
// protection profiles.
func loopbackClient(t *testing.T, profiles ...dtls.SRTPProtectionProfile) *webrtc.PeerConnection {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	s := testpeer.Settings()
	if len(profiles) > 0 {
		s.SetSRTPProtectionProfiles(profiles...)
	}
	pc, err := webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(s)).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Close() })
	return pc
}

// connectClient negotiates client, its tracks added, with a new peer of e
// whose handler is h (the client offers, both gather before the answer),
// and waits until both ends are connected.
func connectClient(t *testing.T, e *Engine, client *webrtc.PeerConnection, h Handler) *Peer {
	t.Helper()
	clientUp := make(chan struct{})
	var once sync.Once
	client.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(clientUp) })
		}
	})
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(client)
	if err := client.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, h, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Answer(client.LocalDescription().SDP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: p.WaitGathered(ctx)}); err != nil {
		t.Fatal(err)
	}
	for _, up := range []<-chan struct{}{p.Connected(), clientUp} {
		select {
		case <-up:
		case <-ctx.Done():
			t.Fatal("not connected")
		}
	}
	return p
}

// closeEngine closes e within 10 seconds.
func closeEngine(t *testing.T, e *Engine) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Error(err)
	}
}

// acceptHandler takes every track, into a sink that drops its packets.
type acceptHandler struct{ nopHandler }

func (acceptHandler) Published(*UpTrack) (TrackSink, error) { return discardSink{}, nil }

type discardSink struct{}

func (discardSink) WriteRTP([]byte, time.Time) error { return nil }
func (discardSink) Close()                           {}

// goroutinesIn counts the live goroutines running fn (fn in their stack).
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte(fn+"("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestTracksPerPeerBounded: a client publishing 12 tracks on 12 m-lines
// gets 4 of them read (MaxTracksPerPeer); the others are refused, counted,
// and cost no goroutine.
func TestTracksPerPeerBounded(t *testing.T) {
	const published, bound = 12, 4
	e, err := NewEngine(Config{ICEIPs: loopback4, MaxTracksPerPeer: bound})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)

	client := loopbackClient(t)
	var tracks []*webrtc.TrackLocalStaticRTP
	for i := range published {
		tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, fmt.Sprint("a", i), "s")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
			t.Fatal(err)
		}
		tracks = append(tracks, tr)
	}
	p := connectClient(t, e, client, acceptHandler{})

	// Every track sends, 20 ms apart, until the router has decided on all
	// of them, and half a second more.
	maxTracks, settled := 0, time.Time{}
	deadline := time.Now().Add(10 * time.Second)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		for _, tr := range tracks {
			pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: []byte{0xf8, 0xff, 0xfe}}
			if err := tr.WriteRTP(pkt); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(20 * time.Millisecond)
		maxTracks = max(maxTracks, e.Stats().Tracks)
		if settled.IsZero() && e.Stats().Tracks+int(e.Refusals().Tracks) >= published {
			settled = time.Now()
		}
		if !settled.IsZero() && time.Since(settled) > 500*time.Millisecond {
			break
		}
	}
	if maxTracks > bound {
		t.Errorf("the router read up to %d tracks of one peer, bound %d", maxTracks, bound)
	}
	if got := e.Stats().Tracks; got != bound {
		t.Errorf("%d tracks read, want %d", got, bound)
	}
	if got := e.Refusals().Tracks; got != published-bound {
		t.Errorf("%d tracks refused, want %d", got, published-bound)
	}
	// One reader and one RTCP reader per track read; none for the others.
	if n := goroutinesIn("rtc.(*Peer).readTrack"); n > bound {
		t.Errorf("%d goroutines in readTrack, want at most %d", n, bound)
	}
	if n := goroutinesIn("rtc.drainRTCP"); n > bound {
		t.Errorf("%d goroutines in drainRTCP, want at most %d", n, bound)
	}
	p.Close()
}

// recordingNet is a transport.Net whose UDP sockets send to loopback only:
// they record every other destination asked for and refuse it before any
// system call. Installed as an Engine's socks.Net it replaces the
// trackedConn layer, so that the router's own socket check hides nothing.
type recordingNet struct {
	transport.Net

	mu      sync.Mutex
	foreign []string
}

func (n *recordingNet) ListenUDP(network string, laddr *net.UDPAddr) (transport.UDPConn, error) {
	c, err := n.Net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	return &recordingConn{UDPConn: c, n: n}, nil
}

func (n *recordingNet) foreignSends() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.foreign...)
}

type recordingConn struct {
	transport.UDPConn
	n *recordingNet
}

var errNotLoopback = errors.New("test: not sent, not loopback")

func (c *recordingConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	if a, ok := addr.(*net.UDPAddr); !ok || !a.IP.IsLoopback() {
		c.n.mu.Lock()
		c.n.foreign = append(c.n.foreign, addr.String())
		c.n.mu.Unlock()
		return 0, errNotLoopback
	}
	return c.UDPConn.WriteTo(b, addr)
}

func (c *recordingConn) WriteToUDP(b []byte, addr *net.UDPAddr) (int, error) {
	return c.WriteTo(b, addr)
}

// candidatePeer returns an engine whose sockets record foreign
// destinations, forbidding 10.0.0.0/8 besides the defaults (as
// ICE_FORBIDDEN_NETWORKS=10.0.0.0/8 does), and one of its peers that has
// answered a loopback client's offer, transformed by edit.
func candidatePeer(t *testing.T, edit func(string) string) (*Engine, *recordingNet, *Peer) {
	t.Helper()
	e, err := NewEngine(Config{
		ICEIPs:            loopback4,
		ForbiddenNetworks: append(DefaultForbiddenNetworks(loopback4), netip.MustParsePrefix("10.0.0.0/8")),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeEngine(t, e) })
	rec := &recordingNet{Net: e.socks.Net}
	e.socks.Net = rec // before any peer opens a socket

	client := loopbackClient(t)
	if _, err := client.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	if _, err := p.Answer(edit(offer.SDP)); err != nil {
		t.Fatal(err)
	}
	return e, rec, p
}

// loopbackTargets opens n UDP sockets on 127.0.0.1 for the router's
// connectivity checks to reach, and counts what each receives.
func loopbackTargets(t *testing.T, n int) ([]*net.UDPConn, func(i int) int) {
	t.Helper()
	var (
		mu       sync.Mutex
		received = make([]int, n)
		conns    []*net.UDPConn
		wg       sync.WaitGroup
	)
	for i := range n {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: loopback4[0]})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1500)
			for {
				if _, _, err := c.ReadFrom(buf); err != nil {
					return
				}
				mu.Lock()
				received[i]++
				mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	})
	return conns, func(i int) int {
		mu.Lock()
		defer mu.Unlock()
		return received[i]
	}
}

func hostCandidate(foundation int, ip string, port int) string {
	return fmt.Sprintf("candidate:%d 1 udp 2130706431 %s %d typ host", foundation, ip, port)
}

// checkChecks waits until the router has checked connectivity to each
// admitted target, then checks that it never tried another address.
func checkChecks(t *testing.T, rec *recordingNet, conns []*net.UDPConn, received func(int) int, admitted int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < admitted; {
		if received(i) > 0 {
			i++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connectivity check reached admitted candidate %d (%s)", i, conns[i].LocalAddr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a few more rounds of checks
	for i := admitted; i < len(conns); i++ {
		if n := received(i); n > 0 {
			t.Errorf("refused candidate %d (%s) got %d checks", i, conns[i].LocalAddr(), n)
		}
	}
	if f := rec.foreignSends(); len(f) > 0 {
		t.Errorf("the router tried %d sends to non-loopback addresses: %v", len(f), f)
	}
}

// TestTrickledCandidatesRefused: candidates naming a private network the
// deployment forbids, a documentation address, the cloud metadata service
// and a link-local address are refused, and so are loopback ones past 20;
// the router checks connectivity to the 20 admitted ones only.
func TestTrickledCandidatesRefused(t *testing.T) {
	e, rec, p := candidatePeer(t, func(s string) string { return s })
	for _, ip := range []string{"10.0.0.1", "192.0.2.1", "169.254.169.254", "fe80::1"} {
		err := p.AddCandidate(webrtc.ICECandidateInit{Candidate: hostCandidate(1, ip, 3478)})
		if !errors.Is(err, ErrCandidateRefused) || !strings.Contains(err.Error(), "forbidden network") {
			t.Errorf("AddCandidate(%s): %v, want ErrCandidateRefused for a forbidden network", ip, err)
		}
	}
	conns, received := loopbackTargets(t, 25)
	for i, c := range conns {
		cand := hostCandidate(100+i, "127.0.0.1", c.LocalAddr().(*net.UDPAddr).Port)
		err := p.AddCandidate(webrtc.ICECandidateInit{Candidate: cand})
		switch {
		case i < maxRemoteCandidates && err != nil:
			t.Errorf("candidate %d refused: %v", i, err)
		case i >= maxRemoteCandidates && !errors.Is(err, ErrCandidateRefused):
			t.Errorf("candidate %d past the bound: %v, want ErrCandidateRefused", i, err)
		}
	}
	// The same candidate again is no new one.
	if err := p.AddCandidate(webrtc.ICECandidateInit{Candidate: hostCandidate(100, "127.0.0.1", conns[0].LocalAddr().(*net.UDPAddr).Port)}); err != nil {
		t.Errorf("a repeated candidate: %v", err)
	}
	if got, want := e.Refusals().Candidates, uint64(4+25-maxRemoteCandidates); got != want {
		t.Errorf("%d candidates refused, want %d", got, want)
	}
	checkChecks(t, rec, conns, received, maxRemoteCandidates)
}

// TestSDPCandidatesRefused: the same bounds hold for the a=candidate lines
// of the offer itself, which pion never sees.
func TestSDPCandidatesRefused(t *testing.T) {
	const n = 22
	var conns []*net.UDPConn
	var received func(int) int
	conns, received = loopbackTargets(t, n)
	e, rec, p := candidatePeer(t, func(offer string) string {
		var lines strings.Builder
		for i, ip := range []string{"10.0.0.1", "169.254.169.254", "2001:db8::1"} {
			lines.WriteString("a=" + hostCandidate(i, ip, 3478) + "\r\n")
		}
		lines.WriteString("a=" + hostCandidate(9, "0123-abcd.local", 3478) + "\r\n") // not an address: pion drops it
		for i, c := range conns {
			lines.WriteString("a=" + hostCandidate(100+i, "127.0.0.1", c.LocalAddr().(*net.UDPAddr).Port) + "\r\n")
		}
		lines.WriteString("a=" + hostCandidate(100, "127.0.0.1", conns[0].LocalAddr().(*net.UDPAddr).Port) + "\r\n") // again
		mid := strings.Index(offer, "a=mid:0\r\n")
		if mid < 0 {
			t.Fatalf("no a=mid:0 in the offer:\n%s", offer)
		}
		at := mid + len("a=mid:0\r\n")
		return offer[:at] + lines.String() + offer[at:]
	})
	if got, want := e.Refusals().Candidates, uint64(3+n-maxRemoteCandidates); got != want {
		t.Errorf("%d candidates refused, want %d", got, want)
	}
	// pion knows the admitted candidates, and no other.
	deadline := time.Now().Add(5 * time.Second)
	for {
		var remote []string
		foreign := false
		for _, s := range p.pc.GetStats() {
			if c, ok := s.(webrtc.ICECandidateStats); ok && c.Type == webrtc.StatsTypeRemoteCandidate {
				remote = append(remote, fmt.Sprintf("%s:%d", c.IP, c.Port))
				foreign = foreign || c.IP != "127.0.0.1"
			}
		}
		if foreign {
			t.Fatalf("pion was given non-loopback candidates: %v", remote)
		}
		if len(remote) == maxRemoteCandidates {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pion's remote candidates: %v; want the %d first loopback ones", remote, maxRemoteCandidates)
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkChecks(t, rec, conns, received, maxRemoteCandidates)
}

// TestSocketRefusesForbidden: an ICE socket refuses, and counts, a datagram
// to a forbidden network, whichever write method is asked, before any
// system call: the socket is closed by then, so that even a broken check
// could not reach the network (it would return net.ErrClosed instead).
func TestSocketRefusesForbidden(t *testing.T) {
	socks, err := newSockets()
	if err != nil {
		t.Fatal(err)
	}
	socks.forbidden = newForbiddenNets(DefaultForbiddenNetworks(loopback4))
	c, err := socks.ListenUDP("udp4", &net.UDPAddr{IP: loopback4[0]})
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*trackedConn)
	recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: loopback4[0]})
	if err != nil {
		t.Fatal(err)
	}
	defer recv.Close()
	if _, err := tc.WriteTo([]byte("ok"), recv.LocalAddr()); err != nil {
		t.Fatalf("a send to loopback: %v", err)
	}
	if string(receive(t, recv)) != "ok" {
		t.Fatal("the loopback datagram did not arrive")
	}
	if err := tc.Close(); err != nil {
		t.Fatal(err)
	}

	metadata := &net.UDPAddr{IP: net.IPv4(169, 254, 169, 254), Port: 80}
	writes := []struct {
		name  string
		write func() error
	}{
		{"WriteTo metadata", func() error { _, err := tc.WriteTo([]byte("x"), metadata); return err }},
		{"WriteTo mapped metadata", func() error {
			_, err := tc.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("::ffff:169.254.169.254"), Port: 80})
			return err
		}},
		{"WriteTo link-local with zone", func() error {
			_, err := tc.WriteTo([]byte("x"), &net.UDPAddr{IP: net.ParseIP("fe80::1"), Port: 80, Zone: "lo"})
			return err
		}},
		{"WriteTo no address (this host)", func() error { _, err := tc.WriteTo([]byte("x"), &net.UDPAddr{Port: 80}); return err }},
		{"WriteToUDP multicast", func() error {
			_, err := tc.WriteToUDP([]byte("x"), &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
			return err
		}},
		{"WriteToUDPAddrPort IPv6 metadata", func() error {
			_, err := tc.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("[fd00:ec2::254]:80"))
			return err
		}},
		{"WriteMsgUDP metadata", func() error { _, _, err := tc.WriteMsgUDP([]byte("x"), nil, metadata); return err }},
		{"WriteMsgUDPAddrPort documentation", func() error {
			_, _, err := tc.WriteMsgUDPAddrPort([]byte("x"), nil, netip.MustParseAddrPort("192.0.2.1:80"))
			return err
		}},
	}
	for i, w := range writes {
		if err := w.write(); !errors.Is(err, errForbiddenDestination) {
			t.Errorf("%s: %v, want errForbiddenDestination", w.name, err)
		}
		if got := socks.refused.sends.Load(); got != uint64(i+1) {
			t.Errorf("%s: %d refused sends counted, want %d", w.name, got, i+1)
		}
	}
	// Loopback is allowed: the write reaches the (closed) socket.
	if _, err := tc.WriteTo([]byte("x"), recv.LocalAddr()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a send to loopback on the closed socket: %v, want net.ErrClosed", err)
	}
}

func TestDefaultForbiddenNetworks(t *testing.T) {
	for _, tc := range []struct {
		ips       []net.IP
		addr      string
		forbidden bool
	}{
		{nil, "169.254.169.254", true},
		{nil, "::ffff:169.254.169.254", true},
		{nil, "fe80::1%eth0", true},
		{nil, "fd00:ec2::254", true},
		{nil, "127.0.0.1", true},
		{nil, "::1", true},
		{loopback4, "127.0.0.1", false},
		{loopback4, "127.1.2.3", false},
		{nil, "0.0.0.0", true},
		{nil, "::", true},
		{nil, "239.255.255.250", true},
		{nil, "ff02::1", true},
		{nil, "255.255.255.255", true},
		{nil, "2001:db8::1", true},
		{nil, "10.0.0.1", false}, // private: a deployment's choice
		{nil, "192.168.1.1", false},
		{nil, "fd12::1", false},
		{nil, "8.8.8.8", false},
		{nil, "2606:4700::1111", false},
	} {
		f := newForbiddenNets(DefaultForbiddenNetworks(tc.ips))
		if got := f.contains(netip.MustParseAddr(tc.addr)); got != tc.forbidden {
			t.Errorf("ICE IPs %v: %s forbidden %v, want %v", tc.ips, tc.addr, got, tc.forbidden)
		}
	}
	// A mapped prefix is taken for its IPv4 network.
	f := newForbiddenNets([]netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")})
	if !f.contains(netip.MustParseAddr("10.1.2.3")) || f.contains(netip.MustParseAddr("11.0.0.1")) {
		t.Errorf("mapped prefix: %v", f)
	}
}

// BenchmarkForbiddenCheck is the check on pion's write path (every packet,
// with EGRESS=pion): a scan of the default list, no allocation.
func BenchmarkForbiddenCheck(b *testing.B) {
	f := newForbiddenNets(append(DefaultForbiddenNetworks(nil), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fc00::/7")))
	ip := net.IPv4(198, 18, 0, 1)
	b.ReportAllocs()
	for b.Loop() {
		if f.containsIP(ip) {
			b.Fatal("forbidden")
		}
	}
}

// TestPeerReflexiveRefused: the router learns a client's address from its
// connectivity checks, not only from candidates (a peer-reflexive
// candidate); its sockets refuse to answer one in a forbidden network.
// Here that network is 127.0.0.1/32 itself, where the client is, so that
// nothing leaves loopback: the client's checks reach the router, whose
// answers are refused and counted, and the peer never connects.
func TestPeerReflexiveRefused(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4, ForbiddenNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	client := loopbackClient(t)
	if _, err := client.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Answer(offer.SDP); err != nil { // no candidates: the client's are never signalled
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	answer := p.WaitGathered(ctx)
	cancel()
	if !strings.Contains(answer, " 127.0.0.1 ") {
		t.Fatalf("the router's answer has no loopback candidate:\n%s", answer)
	}
	if err := client.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.Refusals().Sends < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sends refused: the router never tried to answer the client's checks", e.Refusals().Sends)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-p.Connected():
		t.Fatal("the router connected to a client in a forbidden network")
	case <-time.After(time.Second):
	}
	if r := e.Refusals(); r.Candidates != 0 {
		t.Errorf("%d candidates refused, want none (none were signalled)", r.Candidates)
	}
}
