package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/gorilla/websocket"
	"github.com/pion/ice/v2"
	"github.com/pion/logging"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"
	"golang.org/x/sys/unix"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc"
)

// The floor (loadtest -floor; the process is loadtest -serve-floor): the
// least an SFU can do on this machine for the load the tool offers, so
// that the router's figures are read as ratios to it, measured in the same
// run (absolute times drift ±30 % on a shared host from hour to hour).
//
// What it does for every RTP packet, and nothing else: one goroutine
// receives the publishers' SRTP from one UDP socket with recvmmsg (up to
// 64 datagrams a call, the socket drained on each wake-up) and decrypts
// each with the publisher's SRTP context; for every copy it rewrites the
// 12-byte header (payload type, the receiving slot's own sequence number,
// its SSRC), encrypts with AES-128-GCM (pion/srtp v3, one context per
// receiver) and then sends all copies of the packet with one sendmmsg on
// the same unconnected socket. No interceptors, RTCP, NACK cache, sender
// reports, pipeline, speaker detection, metrics or NATS.
//
// Why the floor terminates signalling, ICE and DTLS itself instead of the
// clients skipping them with pre-shared keys: the comparison must hold the
// clients fixed. On loopback the sender's system call also runs the
// receiver's kernel path and wakes the receiving thread, so what the
// clients are (pion peers, one UDP socket each, their ICE UDP mux, their
// SRTP) is part of every egress packet's cost on the server's side; a
// keyed-in client mode would also need the router to accept pre-shared
// keys, a hole a production router must not have. So the floor speaks the
// router's signalling (POST /join/{conversation}, /connect with the bare
// SDP framing, X-User-Claim) and lets pion run ICE and DTLS on its one
// socket (STUN and DTLS datagrams are handed to pion's ICE UDP mux through
// signalConn; ICE consent checks keep flowing there, as for the router);
// the SRTP keys come from the DTLS session the way the router's direct
// egress path gets them (rtc.ExportSRTPKeys). The clients cannot tell the
// floor from a router.
//
// Which publisher a slot carries: the publishers of the receiver's
// conversation other than itself, in the order they connected, one per
// receiving m-line, as the router's forwarder does when every publisher
// speaks and K is at least P.

// floorStats are the floor's counts, read by tests and logged at exit.
type floorStats struct {
	recvCalls, packetsIn, rtcp, unknown, badPackets atomic.Uint64
	copies, sendCalls, sendErrs                     atomic.Uint64
	pionDrops                                       atomic.Uint64
}

// floor is the floor server: HTTP signalling and the media socket.
type floor struct {
	log  *slog.Logger
	conn *net.UDPConn
	raw  syscall.RawConn
	sig  *signalConn
	mux  *ice.UDPMuxDefault
	api  *webrtc.API
	srv  *http.Server
	ln   net.Listener
	up   websocket.Upgrader

	media  sync.WaitGroup
	served chan error

	mu     sync.Mutex
	convOf map[string]string // user → conversation, from /join
	convs  map[string][]*floorPeer
	pcs    map[*webrtc.PeerConnection]struct{}
	closed bool

	table atomic.Pointer[floorTable]
	stats floorStats
}

// floorPeer is one connected device.
type floorPeer struct {
	conv      string
	publisher bool
	slots     []*floorSlot // its receiving m-lines
	addr      netip.AddrPort
	sa        unix.RawSockaddrInet4
	dec, enc  *srtp.Context // its packets; packets to it
}

// floorSlot is one receiving m-line. seq belongs to the media goroutine.
type floorSlot struct {
	peer *floorPeer
	ssrc uint32
	pt   uint8
	seq  uint16
}

// floorTable is who gets copies of whose packets, by the publisher's
// address; rebuilt whole on every join and leave.
type floorTable struct {
	routes map[netip.AddrPort]*floorRoute
}

type floorRoute struct {
	pub    *floorPeer
	copies []*floorSlot
}

// floorOpusPT is the only codec the floor offers: Opus, as the clients.
const floorOpusPT = 111

// startFloor opens the floor's HTTP listener and media socket on 127.0.0.1.
func startFloor(log *slog.Logger) (*floor, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	f := &floor{
		log: log, conn: conn, raw: raw,
		convOf: map[string]string{}, convs: map[string][]*floorPeer{}, pcs: map[*webrtc.PeerConnection]struct{}{},
		served: make(chan error, 1),
	}
	f.table.Store(&floorTable{})
	f.sig = &signalConn{UDPConn: conn, in: make(chan datagram, 1024), closed: make(chan struct{}), drops: &f.stats.pionDrops}
	f.mux = ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: f.sig})
	if f.api, err = floorAPI(f.mux); err != nil {
		_ = f.mux.Close()
		conn.Close()
		return nil, err
	}
	if f.ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		_ = f.mux.Close()
		conn.Close()
		return nil, err
	}
	m := http.NewServeMux()
	m.HandleFunc("POST /join/{conversation}", f.join)
	m.HandleFunc("GET /connect", f.connect)
	f.srv = &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}
	f.media.Add(1)
	go f.receive()
	go func() { f.served <- f.srv.Serve(f.ln) }()
	return f, nil
}

// floorAPI is pion for the floor's signalling: Opus with the audio level
// extension (so that publishers send it, as to the router), ICE on the
// floor's socket only, on loopback, and no interceptors.
func floorAPI(mux ice.UDPMux) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        floorOpusPT,
	}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	s := webrtc.SettingEngine{}
	s.SetICEUDPMux(mux)
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	s.SetDTLSRetransmissionInterval(100 * time.Millisecond)
	s.LoggerFactory = logging.NewDefaultLoggerFactory()
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithSettingEngine(s)), nil
}

// URL is the floor's base URL.
func (f *floor) URL() string { return "http://" + f.ln.Addr().String() }

// join notes the conversation of the claim's user.
func (f *floor) join(w http.ResponseWriter, r *http.Request) {
	c, err := claim.FromHeader(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	f.convOf[c.UserID] = r.PathValue("conversation")
	f.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// connect answers a device's offer (bare framing), then closes the socket
// as the router does; the device's media joins once it is connected.
func (f *floor) connect(w http.ResponseWriter, r *http.Request) {
	c, err := claim.FromHeader(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	f.mu.Lock()
	conv, ok := f.convOf[c.UserID]
	f.mu.Unlock()
	if !ok {
		http.Error(w, "not joined", http.StatusForbidden)
		return
	}
	ws, err := f.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, offer, err := ws.ReadMessage()
	if err != nil {
		return
	}
	answer, err := f.answer(conv, string(offer))
	if err != nil {
		f.log.Warn("floor: refused an offer", "user", c.UserID, "err", err)
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseInternalServerErr, "floor"), time.Now().Add(time.Second))
		return
	}
	_ = ws.WriteMessage(websocket.TextMessage, []byte(answer))
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
}

// answer makes the peer connection of one device and returns its answer.
func (f *floor) answer(conv, offer string) (string, error) {
	dirs, err := mediaDirections(offer)
	if err != nil {
		return "", err
	}
	pc, err := f.api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return "", err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		_ = pc.Close()
		return "", errors.New("floor closed")
	}
	f.pcs[pc] = struct{}{}
	f.mu.Unlock()
	fail := func(err error) (string, error) {
		f.forget(pc, nil)
		_ = pc.Close()
		return "", err
	}
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
		return fail(err)
	}
	p := &floorPeer{conv: conv}
	var senders []*webrtc.RTPSender
	for _, tr := range pc.GetTransceivers() {
		d := dirs[tr.Mid()]
		if d == "sendrecv" || d == "sendonly" {
			p.publisher = true
		}
		if d != "sendrecv" && d != "recvonly" || tr.Sender() != nil {
			continue
		}
		track, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "floor", "floor")
		if err != nil {
			return fail(err)
		}
		sender, err := f.api.NewRTPSender(track, pc.SCTP().Transport())
		if err != nil {
			return fail(err)
		}
		if err := tr.SetSender(sender, track); err != nil {
			return fail(err)
		}
		senders = append(senders, sender)
	}
	ans, err := pc.CreateAnswer(nil)
	if err != nil {
		return fail(err)
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(ans); err != nil {
		return fail(err)
	}
	select {
	case <-gathered:
	case <-time.After(10 * time.Second):
		return fail(errors.New("ICE gathering did not complete"))
	}
	for _, s := range senders {
		enc := s.GetParameters().Encodings
		if len(enc) == 0 {
			return fail(errors.New("sender without an SSRC"))
		}
		p.slots = append(p.slots, &floorSlot{peer: p, ssrc: uint32(enc[0].SSRC), pt: floorOpusPT})
	}
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		switch s {
		case webrtc.PeerConnectionStateConnected:
			once.Do(func() {
				if err := f.attach(pc, p); err != nil {
					f.log.Warn("floor: a connected peer cannot take media", "err", err)
					go pc.Close()
				}
			})
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			f.forget(pc, p)
		}
	})
	return pc.LocalDescription().SDP, nil
}

// mediaDirections returns each m-line's direction by mid.
func mediaDirections(offer string) (map[string]string, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(offer); err != nil {
		return nil, fmt.Errorf("offer: %w", err)
	}
	dirs := map[string]string{}
	for _, m := range sd.MediaDescriptions {
		mid, _ := m.Attribute("mid")
		dir := "sendrecv"
		for _, d := range []string{"sendrecv", "sendonly", "recvonly", "inactive"} {
			if _, ok := m.Attribute(d); ok {
				dir = d
			}
		}
		dirs[mid] = dir
	}
	return dirs, nil
}

// attach gives a connected peer its SRTP contexts and address, and routes.
func (f *floor) attach(pc *webrtc.PeerConnection, p *floorPeer) error {
	keys, err := rtc.ExportSRTPKeys(pc)
	if err != nil {
		return err
	}
	if p.dec, err = srtp.CreateContext(keys.RemoteKey, keys.RemoteSalt, keys.Profile); err != nil {
		return err
	}
	if p.enc, err = srtp.CreateContext(keys.LocalKey, keys.LocalSalt, keys.Profile); err != nil {
		return err
	}
	pair, err := pc.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		return fmt.Errorf("no selected candidate pair: %v", err)
	}
	a, err := netip.ParseAddr(pair.Remote.Address)
	if err != nil || !a.Unmap().Is4() {
		return fmt.Errorf("remote candidate %q: want IPv4", pair.Remote.Address)
	}
	p.addr = netip.AddrPortFrom(a.Unmap(), pair.Remote.Port)
	p.sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: p.addr.Addr().As4()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.sa.Port))[:], p.addr.Port())
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.pcs[pc]; !ok {
		return errors.New("closed")
	}
	f.convs[p.conv] = append(f.convs[p.conv], p)
	f.rebuild()
	return nil
}

// forget drops a peer connection and its routes.
func (f *floor) forget(pc *webrtc.PeerConnection, p *floorPeer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pcs, pc)
	if p == nil {
		return
	}
	members := f.convs[p.conv]
	for i, m := range members {
		if m == p {
			f.convs[p.conv] = append(members[:i:i], members[i+1:]...)
			f.rebuild()
			return
		}
	}
}

// rebuild publishes a new routing table. Callers hold f.mu.
func (f *floor) rebuild() {
	t := &floorTable{routes: map[netip.AddrPort]*floorRoute{}}
	for _, members := range f.convs {
		var pubs []*floorPeer
		for _, m := range members {
			if m.publisher {
				pubs = append(pubs, m)
				t.routes[m.addr] = &floorRoute{pub: m}
			}
		}
		for _, r := range members {
			j := 0
			for _, p := range pubs {
				if p == r {
					continue
				}
				if j == len(r.slots) {
					break
				}
				rt := t.routes[p.addr]
				rt.copies = append(rt.copies, r.slots[j])
				j++
			}
		}
	}
	f.table.Store(t)
}

// floorBatch is how many datagrams one recvmmsg may return.
const floorBatch = 64

// floorIO is the media goroutine's buffers and system call state, made
// once: the packet path allocates nothing.
type floorIO struct {
	f *floor

	in    [][]byte
	inIov []unix.Iovec
	names []unix.RawSockaddrInet4
	inHdr []unix.Mmsghdr
	got   int

	plain  []byte
	hdr    rtp.Header
	out    [][]byte
	outIov []unix.Iovec
	outHdr []unix.Mmsghdr
	off, n int
	sent   int

	errno          syscall.Errno
	readFn, sendFn func(fd uintptr) bool
}

func newFloorIO(f *floor) *floorIO {
	o := &floorIO{
		f: f, in: make([][]byte, floorBatch), inIov: make([]unix.Iovec, floorBatch),
		names: make([]unix.RawSockaddrInet4, floorBatch), inHdr: make([]unix.Mmsghdr, floorBatch),
		plain: make([]byte, 0, 1500),
	}
	for i := range o.in {
		o.in[i] = make([]byte, 1500)
		o.inIov[i].Base = &o.in[i][0]
		o.inIov[i].SetLen(len(o.in[i]))
		o.inHdr[i].Hdr.Iov = &o.inIov[i]
		o.inHdr[i].Hdr.SetIovlen(1)
		o.inHdr[i].Hdr.Name = (*byte)(unsafe.Pointer(&o.names[i]))
	}
	o.readFn, o.sendFn = o.recvmmsg, o.sendmmsg
	return o
}

func (o *floorIO) recvmmsg(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&o.inHdr[0])), uintptr(len(o.inHdr)), 0, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	o.got, o.errno = int(n), e
	return true
}

func (o *floorIO) sendmmsg(fd uintptr) bool {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&o.outHdr[o.off])), uintptr(o.n-o.off), 0, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	o.sent, o.errno = int(n), e
	return true
}

// grow makes room for n copies.
func (o *floorIO) grow(n int) {
	if n <= len(o.out) {
		return
	}
	for len(o.out) < n {
		o.out = append(o.out, make([]byte, 1500+16))
	}
	o.outIov = make([]unix.Iovec, len(o.out))
	o.outHdr = make([]unix.Mmsghdr, len(o.out))
	for i := range o.outHdr {
		o.outHdr[i].Hdr.Iov = &o.outIov[i]
		o.outHdr[i].Hdr.SetIovlen(1)
	}
}

// receive is the media goroutine: recvmmsg until the socket closes.
func (f *floor) receive() {
	defer f.media.Done()
	o := newFloorIO(f)
	for {
		for i := range o.inHdr {
			o.inHdr[i].Hdr.Namelen = unix.SizeofSockaddrInet4
			o.inHdr[i].Len = 0
		}
		if err := f.raw.Read(o.readFn); err != nil {
			return // closed
		}
		f.stats.recvCalls.Add(1)
		if o.errno != 0 {
			continue // an ICMP error of an earlier send
		}
		for i := 0; i < o.got; i++ {
			sa := &o.names[i]
			port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
			o.handle(o.in[i][:o.inHdr[i].Len], netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port))
		}
	}
}

// handle takes one datagram: STUN and DTLS go to pion, RTP is forwarded,
// RTCP is dropped (RFC 7983 demultiplexing on the first byte).
func (o *floorIO) handle(pkt []byte, from netip.AddrPort) {
	f := o.f
	if len(pkt) == 0 {
		return
	}
	switch b := pkt[0]; {
	case b < 4 || b >= 20 && b < 64:
		f.sig.deliver(pkt, from)
		return
	case b < 128 || b >= 192 || len(pkt) < 12:
		return
	}
	if pkt[1] >= 192 && pkt[1] <= 223 {
		f.stats.rtcp.Add(1)
		return
	}
	r := f.table.Load().routes[from]
	if r == nil {
		f.stats.unknown.Add(1)
		return
	}
	plain, err := r.pub.dec.DecryptRTP(o.plain[:0], pkt, &o.hdr)
	if err != nil || len(plain)+16 > 1500+16 {
		f.stats.badPackets.Add(1)
		return
	}
	f.stats.packetsIn.Add(1)
	if len(r.copies) == 0 {
		return
	}
	o.grow(len(r.copies))
	n := 0
	for _, s := range r.copies {
		b := o.out[n][:len(plain)]
		copy(b, plain)
		b[1] = b[1]&0x80 | s.pt
		binary.BigEndian.PutUint16(b[2:4], s.seq)
		binary.BigEndian.PutUint32(b[8:12], s.ssrc)
		ct, err := s.peer.enc.EncryptRTP(b[:0], b, &o.hdr)
		if err != nil {
			f.stats.badPackets.Add(1)
			continue
		}
		s.seq++
		o.outIov[n].Base = &ct[0]
		o.outIov[n].SetLen(len(ct))
		o.outHdr[n].Hdr.Name = (*byte)(unsafe.Pointer(&s.peer.sa))
		o.outHdr[n].Hdr.Namelen = unix.SizeofSockaddrInet4
		n++
	}
	o.send(n)
}

// send sends the first n queued copies with as few sendmmsg as the kernel
// takes (one, unless it stops early); a datagram it refuses is skipped.
func (o *floorIO) send(n int) {
	f := o.f
	f.stats.copies.Add(uint64(n))
	for o.off, o.n = 0, n; o.off < o.n; {
		if err := f.raw.Write(o.sendFn); err != nil {
			return
		}
		f.stats.sendCalls.Add(1)
		if o.errno != 0 {
			f.stats.sendErrs.Add(1)
			o.off++
			continue
		}
		o.off += o.sent
	}
}

// close stops the floor.
func (f *floor) close() error {
	f.mu.Lock()
	f.closed = true
	pcs := make([]*webrtc.PeerConnection, 0, len(f.pcs))
	for pc := range f.pcs {
		pcs = append(pcs, pc)
	}
	f.mu.Unlock()
	err := f.srv.Close()
	for _, pc := range pcs {
		_ = pc.Close()
	}
	_ = f.mux.Close()
	_ = f.conn.Close()
	f.media.Wait()
	return err
}

// datagram is one STUN or DTLS datagram for pion.
type datagram struct {
	b    []byte
	from *net.UDPAddr
}

// signalConn is the floor's socket as pion's ICE UDP mux sees it: it reads
// the STUN and DTLS datagrams the media goroutine hands over (a bounded
// queue; overflow is dropped and counted, as a full socket buffer would)
// and writes on the socket itself.
type signalConn struct {
	*net.UDPConn
	in     chan datagram
	closed chan struct{}
	once   sync.Once
	drops  *atomic.Uint64
}

func (c *signalConn) deliver(b []byte, from netip.AddrPort) {
	select {
	case c.in <- datagram{b: append([]byte(nil), b...), from: net.UDPAddrFromAddrPort(from)}:
	default:
		c.drops.Add(1)
	}
}

// ReadFrom returns the next datagram for pion.
func (c *signalConn) ReadFrom(b []byte) (int, net.Addr, error) {
	select {
	case d := <-c.in:
		return copy(b, d.b), d.from, nil
	case <-c.closed:
		return 0, nil, net.ErrClosed
	}
}

// Close ends pion's reads; the floor closes the socket.
func (c *signalConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// serveFloor is the -serve-floor mode: the floor until SIGINT or SIGTERM,
// logging "router listening" as cmd/router does, so that the tool starts it
// the way it starts a router.
func serveFloor() int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	f, err := startFloor(log)
	if err != nil {
		log.Error("floor did not start", "err", err)
		return 1
	}
	log.Info("router listening", "addr", f.ln.Addr().String(), "floor", true)
	code := 0
	select {
	case <-ctx.Done():
	case err := <-f.served:
		log.Error("http server failed", "err", err)
		code = 1
	}
	if err := f.close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("unclean shutdown", "err", err)
	}
	s := &f.stats
	log.Info("floor stopped", "packets_in", s.packetsIn.Load(), "copies", s.copies.Load(),
		"recvmmsg", s.recvCalls.Load(), "sendmmsg", s.sendCalls.Load(), "send_errors", s.sendErrs.Load(),
		"unknown", s.unknown.Load(), "bad", s.badPackets.Load(), "rtcp", s.rtcp.Load(), "pion_drops", s.pionDrops.Load())
	return code
}
