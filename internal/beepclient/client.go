// Package beepclient is a Beep voice client built on pion: it connects to a
// router's /connect the way Beep's clients do, publishes Opus packets with
// the RFC 6464 audio level extension, and records what it receives. The
// router's tests and load tool use it. It gathers ICE candidates on
// 127.0.0.1 only, so its traffic never leaves loopback.
package beepclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pion/dtls/v2"
	"github.com/pion/ice/v2"
	"github.com/pion/interceptor"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/stamp"
)

// Framing selects the /connect message framing.
type Framing int

// Framings of the Beep /connect protocol.
const (
	// Bare sends the offer after gathering and expects a bare SDP answer.
	Bare Framing = iota
	// Prefixed sends "offer::" at once and trickles "ice::" candidates.
	Prefixed
)

// Options configure a Client.
type Options struct {
	// URL is the router's /connect WebSocket URL.
	URL string
	// Claim is sent as X-User-Claim.
	Claim claim.Claim
	// Framing is the signalling framing.
	Framing Framing
	// Dialer dials the WebSocket (a wss:// URL's TLS settings, say); nil
	// means websocket.DefaultDialer.
	Dialer *websocket.Dialer
	// Publish adds a sending audio track (on a sendrecv m-line).
	Publish bool
	// Receive is the number of receiving audio m-lines (the first is the
	// sendrecv one when Publish).
	Receive int
	// SeparateSend publishes on its own sendonly m-line, before the
	// receiving ones.
	SeparateSend bool
	// NoAudioLevel leaves the audio level extension out of the offer.
	NoAudioLevel bool
	// NoNACK leaves out NACK feedback and its interceptors.
	NoNACK bool
	// AnswerFilter, if set, rewrites the router's answer before it is
	// applied (tests use it to route media through a relay).
	AnswerFilter func(sdp string) string
	// NoReplayProtection accepts SRTP packets seen before, so that a
	// retransmission of a packet that was not lost is visible.
	NoReplayProtection bool
	// SRTPProfiles are the DTLS-SRTP protection profiles the client
	// offers, in order; nil: pion's (AEAD_AES_256_GCM first). A browser
	// session is AES_CM_128_HMAC_SHA1_80: Chromium's choice.
	SRTPProfiles []dtls.SRTPProtectionProfile
	// ArrivalTimes makes the client note when the kernel received each RTP
	// datagram: ICE then uses one UDP socket of the client's own on
	// 127.0.0.1 (through pion's UDP mux) with SO_TIMESTAMPNS, and every
	// received packet gets its kernel arrival time next to its read time
	// (Packet.Arrived, OnTrack's arrived). That time leaves out the
	// client's own receive path (goroutine hand-offs, SRTP decryption),
	// although the mux adds one hand-off to that path. Linux only.
	ArrivalTimes bool
	// OnTrack, when set, replaces recording with a lightweight callback,
	// for load tools: for every receiving track it is called once, with the
	// track's mid, on that track's reading goroutine, and returns the
	// function that then gets each of the track's packets, when it was
	// read (at) and, with ArrivalTimes, when the kernel received it
	// (arrived; the zero time without ArrivalTimes, or when the packet's
	// arrival is no longer known). The track is read into one reused
	// buffer and unmarshalled into one reused rtp.Packet: the function
	// must not keep p or its payload. Received then stays empty and
	// WaitFor sees no packets.
	OnTrack func(mid string) func(p *rtp.Packet, at, arrived time.Time)
	// ICEServers are the client's STUN/TURN servers (none by default).
	ICEServers []webrtc.ICEServer
	// RelayOnly makes the client use TURN relay candidates only
	// (ICETransportPolicyRelay): its media goes through ICEServers' TURN.
	RelayOnly bool
}

// Packet is one received RTP packet.
type Packet struct {
	// Mid is the m-line the packet arrived on.
	Mid string
	// At is when it was read.
	At time.Time
	// Arrived is when the kernel received the datagram, with
	// Options.ArrivalTimes (else, or when unknown, the zero time).
	Arrived time.Time
	rtp.Packet
}

// Client is one connected device.
type Client struct {
	pc      *webrtc.PeerConnection
	track   *webrtc.TrackLocalStaticRTP
	levelID uint8
	seq     uint16
	ts      uint32

	onTrack func(mid string) func(p *rtp.Packet, at, arrived time.Time)

	// mux and arr are set with Options.ArrivalTimes: the ICE UDP mux
	// over the client's timestamping socket, and what it recorded.
	mux *ice.UDPMuxDefault
	arr *stamp.Table

	bye     chan struct{}
	byeOnce sync.Once

	mu       sync.Mutex
	closing  bool
	received map[string][]Packet
	reports  map[uint32]rtcp.SenderReport // the last one per SSRC
	notify   chan struct{}
	wg       sync.WaitGroup
}

// loopbackAPI returns a pion API that gathers on 127.0.0.1 only; with
// mux, only on mux's socket.
func loopbackAPI(o Options, mux *ice.UDPMuxDefault) (*webrtc.API, error) {
	m := &webrtc.MediaEngine{}
	codec := webrtc.RTPCodecParameters{
		RTPCodecCapability: webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2, SDPFmtpLine: "minptime=10;useinbandfec=1"},
		PayloadType:        111,
	}
	if !o.NoNACK {
		codec.RTCPFeedback = []webrtc.RTCPFeedback{{Type: "nack"}}
	}
	if err := m.RegisterCodec(codec, webrtc.RTPCodecTypeAudio); err != nil {
		return nil, err
	}
	if !o.NoAudioLevel {
		if err := m.RegisterHeaderExtension(webrtc.RTPHeaderExtensionCapability{URI: sdp.AudioLevelURI}, webrtc.RTPCodecTypeAudio); err != nil {
			return nil, err
		}
	}
	reg := &interceptor.Registry{}
	if !o.NoNACK {
		if err := webrtc.ConfigureNack(m, reg); err != nil {
			return nil, err
		}
	}
	s := webrtc.SettingEngine{}
	s.SetIncludeLoopbackCandidate(true)
	s.SetIPFilter(func(ip net.IP) bool { return ip.Equal(net.IPv4(127, 0, 0, 1)) })
	s.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	s.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	if o.NoReplayProtection {
		s.DisableSRTPReplayProtection(true)
	}
	if len(o.SRTPProfiles) > 0 {
		s.SetSRTPProtectionProfiles(o.SRTPProfiles...)
	}
	if mux != nil {
		s.SetICEUDPMux(mux)
	}
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(reg), webrtc.WithSettingEngine(s)), nil
}

// Dial connects a client: it signals over /connect and waits until the peer
// connection is established and the router has closed the socket.
func Dial(ctx context.Context, o Options) (*Client, error) {
	var (
		mux *ice.UDPMuxDefault
		arr *stamp.Table
	)
	if o.ArrivalTimes {
		arr = &stamp.Table{}
		raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, fmt.Errorf("arrival times: listen: %w", err)
		}
		conn, err := stamp.Wrap(raw, arr)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("arrival times: %w", err)
		}
		mux = ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: conn})
	}
	api, err := loopbackAPI(o, mux)
	var pc *webrtc.PeerConnection
	if err == nil {
		conf := webrtc.Configuration{ICEServers: o.ICEServers}
		if o.RelayOnly {
			conf.ICETransportPolicy = webrtc.ICETransportPolicyRelay
		}
		pc, err = api.NewPeerConnection(conf)
	}
	if err != nil {
		if mux != nil {
			_ = mux.Close()
		}
		return nil, fmt.Errorf("peer connection: %w", err)
	}
	c := &Client{pc: pc, received: make(map[string][]Packet), reports: make(map[uint32]rtcp.SenderReport), notify: make(chan struct{}, 1), bye: make(chan struct{}), seq: 1000, ts: 160000, onTrack: o.OnTrack, mux: mux, arr: arr}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	recv := o.Receive
	if o.Publish {
		c.track, err = webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "audio", o.Claim.ClientID)
		if err != nil {
			return nil, err
		}
		dir := webrtc.RTPTransceiverDirectionSendonly
		if recv > 0 && !o.SeparateSend {
			dir = webrtc.RTPTransceiverDirectionSendrecv
			recv--
		}
		tr, err := pc.AddTransceiverFromTrack(c.track, webrtc.RTPTransceiverInit{Direction: dir})
		if err != nil {
			return nil, err
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			buf := make([]byte, 1500)
			for {
				if _, _, err := tr.Sender().Read(buf); err != nil {
					return
				}
			}
		}()
	}
	for i := 0; i < recv; i++ {
		if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			return nil, err
		}
	}
	pc.OnTrack(c.read)
	connected := make(chan struct{})
	var once sync.Once
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			once.Do(func() { close(connected) })
		}
	})

	h := http.Header{}
	b, _ := json.Marshal(o.Claim)
	h.Set(claim.Header, string(b))
	dialer := o.Dialer
	if dialer == nil {
		dialer = websocket.DefaultDialer
	}
	ws, resp, err := dialer.DialContext(ctx, o.URL, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %d)", o.URL, err, resp.StatusCode)
		}
		return nil, fmt.Errorf("dial %s: %w", o.URL, err)
	}
	defer ws.Close()
	var wmu sync.Mutex
	send := func(m string) error {
		wmu.Lock()
		defer wmu.Unlock()
		return ws.WriteMessage(websocket.TextMessage, []byte(m))
	}

	offer, err := pc.CreateOffer(nil)
	if err != nil {
		return nil, err
	}
	gathered := webrtc.GatheringCompletePromise(pc)
	if o.Framing == Prefixed {
		pc.OnICECandidate(func(ci *webrtc.ICECandidate) {
			if ci == nil {
				return
			}
			b, _ := json.Marshal(ci.ToJSON())
			_ = send("ice::" + string(b))
		})
	}
	if err := pc.SetLocalDescription(offer); err != nil {
		return nil, err
	}
	if o.Framing == Prefixed {
		if err := send("offer::" + offer.SDP); err != nil {
			return nil, err
		}
	} else {
		select {
		case <-gathered:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if err := send(pc.LocalDescription().SDP); err != nil {
			return nil, err
		}
	}

	// Read the answer, then candidates, until the router closes the socket.
	closed := make(chan error, 1)
	go func() {
		answered := false
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) && ce.Code != websocket.CloseNormalClosure {
					closed <- fmt.Errorf("router closed signalling: %d %s", ce.Code, ce.Text)
				} else if !answered {
					closed <- fmt.Errorf("signalling ended before an answer: %w", err)
				} else {
					closed <- nil
				}
				return
			}
			m := string(data)
			switch {
			case strings.HasPrefix(m, "ice::"):
				var ci webrtc.ICECandidateInit
				if err := json.Unmarshal([]byte(strings.TrimPrefix(m, "ice::")), &ci); err == nil {
					_ = pc.AddICECandidate(ci)
				}
			case !answered:
				sdpText := m
				if o.Framing == Prefixed {
					sdpText = strings.TrimPrefix(m, "answer::")
				}
				if o.AnswerFilter != nil {
					sdpText = o.AnswerFilter(sdpText)
				}
				if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: sdpText}); err != nil {
					closed <- fmt.Errorf("set answer: %w", err)
					return
				}
				answered = true
			}
		}
	}()
	select {
	case err := <-closed:
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, fmt.Errorf("signalling: %w", ctx.Err())
	}
	select {
	case <-connected:
	case <-ctx.Done():
		return nil, fmt.Errorf("connect: %w", ctx.Err())
	}
	if o.Publish {
		for _, tr := range pc.GetTransceivers() {
			if tr.Sender() == nil {
				continue
			}
			for _, e := range tr.Sender().GetParameters().HeaderExtensions {
				if e.URI == sdp.AudioLevelURI {
					c.levelID = uint8(e.ID)
				}
			}
		}
	}
	ok = true
	return c, nil
}

func (c *Client) read(t *webrtc.TrackRemote, recv *webrtc.RTPReceiver) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	c.wg.Add(2)
	c.mu.Unlock()
	defer c.wg.Done()
	go func() {
		defer c.wg.Done()
		for {
			pkts, _, err := recv.ReadRTCP()
			if err != nil {
				return
			}
			for _, p := range pkts {
				switch p := p.(type) {
				case *rtcp.Goodbye:
					c.byeOnce.Do(func() { close(c.bye) })
				case *rtcp.SenderReport:
					c.mu.Lock()
					c.reports[p.SSRC] = *p
					c.mu.Unlock()
					select {
					case c.notify <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	mid := ""
	for _, tr := range c.pc.GetTransceivers() {
		if tr.Receiver() != nil && tr.Receiver().Track() == t {
			mid = tr.Mid()
		}
	}
	if c.onTrack != nil {
		c.count(t, c.onTrack(mid))
		return
	}
	for {
		p, _, err := t.ReadRTP()
		if err != nil {
			return
		}
		at := time.Now()
		arrived := c.arrived(p.SSRC, p.SequenceNumber)
		c.mu.Lock()
		c.received[mid] = append(c.received[mid], Packet{Mid: mid, At: at, Arrived: arrived, Packet: *p})
		c.mu.Unlock()
		select {
		case c.notify <- struct{}{}:
		default:
		}
	}
}

// arrived returns when the kernel received packet ssrc/seq, or the zero
// time when that is not known.
func (c *Client) arrived(ssrc uint32, seq uint16) time.Time {
	if c.arr == nil {
		return time.Time{}
	}
	if at, ok := c.arr.Lookup(ssrc, seq); ok {
		return time.Unix(0, at)
	}
	return time.Time{}
}

// count reads t into one reused buffer and packet, handing each to handle.
func (c *Client) count(t *webrtc.TrackRemote, handle func(p *rtp.Packet, at, arrived time.Time)) {
	buf := make([]byte, 1500)
	var p rtp.Packet
	for {
		n, _, err := t.Read(buf)
		if err != nil {
			return
		}
		if p.Unmarshal(buf[:n]) != nil {
			continue
		}
		if handle != nil {
			handle(&p, time.Now(), c.arrived(p.SSRC, p.SequenceNumber))
		}
	}
}

// Send publishes one 20 ms Opus packet with the given audio level (-dBov,
// 0 loudest .. 127 silence; negative: no level extension).
func (c *Client) Send(payload []byte, level int) error {
	if c.track == nil {
		return errors.New("client does not publish")
	}
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: c.seq, Timestamp: c.ts, SSRC: 1}, Payload: payload}
	c.seq++
	c.ts += 960
	if level >= 0 && c.levelID != 0 {
		b := byte(level) & 0x7f
		if level < 127 {
			b |= 0x80
		}
		if err := p.SetExtension(c.levelID, []byte{b}); err != nil {
			return err
		}
	}
	return c.track.WriteRTP(p)
}

// ReceivedLevelID returns the negotiated id of the RFC 6464 audio level
// extension on the client's receiving m-lines, 0 when none has it.
func (c *Client) ReceivedLevelID() uint8 {
	for _, tr := range c.pc.GetTransceivers() {
		r := tr.Receiver()
		if r == nil {
			continue
		}
		for _, e := range r.GetParameters().HeaderExtensions {
			if e.URI == sdp.AudioLevelURI {
				return uint8(e.ID)
			}
		}
	}
	return 0
}

// Bye is closed when the router sends RTCP BYE on a received stream.
func (c *Client) Bye() <-chan struct{} { return c.bye }

// WriteRTCP sends RTCP packets to the router.
func (c *Client) WriteRTCP(pkts ...rtcp.Packet) error { return c.pc.WriteRTCP(pkts) }

// SkipTime advances the RTP timestamp as if d of audio were not sent (DTX).
func (c *Client) SkipTime(d time.Duration) { c.ts += uint32(d * 48000 / time.Second) }

// Received returns a copy of the packets received on each m-line.
func (c *Client) Received() map[string][]Packet {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string][]Packet, len(c.received))
	for k, v := range c.received {
		out[k] = append([]Packet(nil), v...)
	}
	return out
}

// SenderReports returns a copy of the last RTCP sender report received on
// each SSRC.
func (c *Client) SenderReports() map[uint32]rtcp.SenderReport {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.reports)
}

// WaitFor waits until cond holds on the received packets, or ctx ends.
func (c *Client) WaitFor(ctx context.Context, cond func(map[string][]Packet) bool) error {
	return c.wait(ctx, func() bool { return cond(c.received) })
}

// WaitReports waits until cond holds for the last RTCP sender report
// received on each SSRC, or ctx ends. cond must not keep the map.
func (c *Client) WaitReports(ctx context.Context, cond func(map[uint32]rtcp.SenderReport) bool) error {
	return c.wait(ctx, func() bool { return cond(c.reports) })
}

// wait waits until cond, called with c.mu held, holds or ctx ends.
func (c *Client) wait(ctx context.Context, cond func() bool) error {
	for {
		c.mu.Lock()
		ok := cond()
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-c.notify:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close closes the peer connection, and the ICE UDP mux with its socket
// when the client has one, and waits for the client's goroutines.
func (c *Client) Close() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	_ = c.pc.Close()
	if c.mux != nil {
		_ = c.mux.Close()
	}
	c.wg.Wait()
}
