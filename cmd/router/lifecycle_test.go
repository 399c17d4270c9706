package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v3"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"

	"github.com/beepvoice/router/internal/testutil"
)

func TestConnectThenJoin(t *testing.T) {
	r := startRouter(t, nil)
	a := r.dial("alice", beepclient.Options{Publish: true})
	b := r.dial("bob", beepclient.Options{Receive: 1})
	if err := pace(a, 'a', 0, 10, loud); err != nil {
		t.Fatal(err)
	}
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	if err := pace(a, 'a', 100, 20, loud); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['a'] >= 15
	}); err != nil {
		t.Fatalf("bob does not hear alice after both joined: %v", err)
	}
	for _, pkts := range b.Received() {
		for _, p := range pkts {
			if counter(p) < 100 {
				t.Fatalf("bob heard packet %d, sent before anyone joined", counter(p))
			}
		}
	}
}

// TestSendonlyThenRecvonly offers a publishing sendonly m-line before a
// receiving one: the answer must keep the first recvonly and send on the
// second only.
func TestSendonlyThenRecvonly(t *testing.T) {
	r := startRouter(t, nil)
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	a := r.dial("alice", beepclient.Options{Publish: true, SeparateSend: true, Receive: 1})
	b := r.dial("bob", beepclient.Options{Publish: true, Receive: 1})
	paceAll(t, 20, loud, map[byte]*beepclient.Client{'a': a, 'b': b})
	if err := a.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['b'] >= 15
	}); err != nil {
		t.Fatalf("alice does not hear bob: %v", err)
	}
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['a'] >= 15
	}); err != nil {
		t.Fatalf("bob does not hear alice: %v", err)
	}
	for mid := range a.Received() {
		if mid != "1" {
			t.Fatalf("alice received on m-line %q, want only the recvonly one (1)", mid)
		}
	}
}

func TestSingleUDPPort(t *testing.T) {
	port := testutil.FreeUDPPort(t)
	r := startRouter(t, map[string]string{"UDP_PORT": strconv.Itoa(port)})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	a := r.dial("alice", beepclient.Options{Publish: true, Receive: 1})
	b := r.dial("bob", beepclient.Options{Publish: true, Receive: 1, Framing: beepclient.Prefixed})
	paceAll(t, 20, loud, map[byte]*beepclient.Client{'a': a, 'b': b})
	for id, c := range map[byte]*beepclient.Client{'a': a, 'b': b} {
		if err := c.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
			n, _ := heard(rx)
			return n['a'+'b'-id] >= 15
		}); err != nil {
			t.Fatalf("%c does not hear the other over the single port: %v", id, err)
		}
	}
	// Both peers' media used the one port: nothing else is bound by ICE.
	if _, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		t.Fatalf("UDP port %d is not in use by the router", port)
	}
	// The slots sent on the mux's socket directly.
	if s := r.a.rooms.Stats(); s.DirectPeers != 2 {
		t.Errorf("%d peers send directly, want 2", s.DirectPeers)
	}
}

// TestSharedICESocketByDefault checks that without UDP_PORT the router
// answers every peer with the same ICE port (one shared socket, ICE_SOCKETS
// shared), and with ICE_SOCKETS=per-peer with a port of each peer's own.
func TestSharedICESocketByDefault(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		same bool
	}{
		{"default", nil, true},
		{"per-peer", map[string]string{"ICE_SOCKETS": "per-peer"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startRouter(t, tc.env)
			offer := audioOffer(t)
			var ports []string
			for i := range 3 {
				user := fmt.Sprintf("u%d", i)
				r.mustJoin(user, "conv-1")
				ws, _, err := websocket.DefaultDialer.Dial(r.wsURL(), claimHeader(user, "phone"))
				if err != nil {
					t.Fatal(err)
				}
				defer ws.Close()
				if err := ws.WriteMessage(websocket.TextMessage, []byte(offer)); err != nil {
					t.Fatal(err)
				}
				_ = ws.SetReadDeadline(time.Now().Add(15 * time.Second))
				_, answer, err := ws.ReadMessage()
				if err != nil {
					t.Fatal(err)
				}
				var port string
				for _, l := range strings.Split(string(answer), "\n") {
					// a=candidate:foundation component udp priority address port typ host
					if f := strings.Fields(l); len(f) >= 8 && strings.HasPrefix(f[0], "a=candidate:") && f[4] == "127.0.0.1" {
						port = f[5]
					}
				}
				if port == "" {
					t.Fatalf("answer without a loopback candidate: %q", answer)
				}
				ports = append(ports, port)
			}
			same := ports[0] == ports[1] && ports[1] == ports[2]
			if same != tc.same {
				t.Errorf("ICE ports of three peers: %v; want the same port: %v", ports, tc.same)
			}
			// The start-up log names the shared port.
			shared := r.a.rooms.SharedAddrs()
			if desc := udpPortDesc(config{ICEPerPeer: !tc.same}, shared); tc.same != strings.HasPrefix(desc, ports[0]+" ") {
				t.Errorf("udp_port in the start-up log: %q (shared sockets %v); answered port %s", desc, shared, ports[0])
			}
		})
	}
}

func TestPeerThatNeverConnectsIsReleased(t *testing.T) {
	r := startRouter(t, map[string]string{"CONNECT_TIMEOUT": "1s"})
	// A real offer from a peer that never applies the answer.
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	offer, err := pc.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set(claim.Header, `{"userid":"ghost","clientid":"c"}`)
	ws, _, err := websocket.DefaultDialer.Dial(r.wsURL(), h)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte("offer::"+offer.SDP)); err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	var closeErr *websocket.CloseError
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if !errors.As(err, &closeErr) {
				t.Fatalf("want a close frame, got %v", err)
			}
			break
		}
	}
	if closeErr.Code != websocket.CloseInternalServerErr || !strings.Contains(closeErr.Text, "failed") {
		t.Fatalf("close %d %q", closeErr.Code, closeErr.Text)
	}
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool { return r.a.rooms.Stats().Peers == 0 }); err != nil {
		t.Fatalf("peer not released: %+v", r.a.rooms.Stats())
	}
}

func TestNACKAnsweredFromCache(t *testing.T) {
	// Each egress path keeps its own cache: the slot's (direct) or pion's
	// NACK responder.
	for _, egress := range []string{"direct", "pion"} {
		t.Run(egress, func(t *testing.T) { testNACKAnswered(t, egress) })
	}
}

func testNACKAnswered(t *testing.T, egress string) {
	r := startRouter(t, map[string]string{"EGRESS": egress})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	a := r.dial("alice", beepclient.Options{Publish: true})
	// Bob NACKs a packet he did receive: SRTP replay protection would hide
	// the retransmission, so he turns it off.
	b := r.dial("bob", beepclient.Options{Receive: 1, NoReplayProtection: true})
	if err := pace(a, 'a', 0, 20, loud); err != nil {
		t.Fatal(err)
	}
	var ssrc uint32
	var seq uint16
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		for _, pkts := range rx {
			if len(pkts) >= 10 {
				ssrc, seq = pkts[5].SSRC, pkts[5].SequenceNumber
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteRTCP(&rtcp.TransportLayerNack{MediaSSRC: ssrc, Nacks: []rtcp.NackPair{{PacketID: seq}}}); err != nil {
		t.Fatal(err)
	}
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n := 0
		for _, pkts := range rx {
			for _, p := range pkts {
				if p.SequenceNumber == seq {
					n++
				}
			}
		}
		return n >= 2
	}); err != nil {
		t.Fatalf("packet %d was not retransmitted after a NACK: %v", seq, err)
	}
	if s := r.a.rooms.Stats(); egress == "direct" && s.Resent != 1 {
		t.Errorf("%d packets counted as resent, want 1", s.Resent)
	}
}

// buildRouter builds the router binary once per test run.
func buildRouter(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "router")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBinary runs the real binary: bad settings stop it with a message that
// names them; a .env file configures it; SIGTERM flushes the open bite of a
// talking client to NATS and exits 0.
func TestBinary(t *testing.T) {
	bin := buildRouter(t)
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}

	t.Run("invalid setting", func(t *testing.T) {
		cmd := exec.Command(bin)
		cmd.Dir = t.TempDir()
		cmd.Env = append(base, "UDP_PORT=99999")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "UDP_PORT") {
			t.Fatalf("exit %v, output %q", err, out)
		}
	})

	t.Run("print pipeline", func(t *testing.T) {
		out, err := exec.Command(bin, "-print-pipeline").Output()
		want, werr := defaultPipeline(registry()) // TestPrintPipeline checks it
		if err != nil || werr != nil || string(out) != string(want) {
			t.Fatalf("%v, %v: printed\n%s\nwant\n%s", err, werr, out, want)
		}
	})

	t.Run("env file and SIGTERM under load", func(t *testing.T) {
		dir := t.TempDir()
		listen, natsAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
		env := fmt.Sprintf("LISTEN=%s\nPERMISSIONS_HOST=allow-all\nICE_IPS=127.0.0.1\nNATS_EMBEDDED_LISTEN=%s\n", listen, natsAddr)
		if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(env), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		cmd.Dir = dir
		cmd.Env = base
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill() }()
		logs := make(chan string, 1000)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				logs <- sc.Text()
			}
			close(logs)
		}()
		waitLog(t, logs, "router listening")

		nc, err := nats.Connect("nats://" + natsAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		bites := make(chan *nats.Msg, 100)
		if _, err := nc.ChanSubscribe("bite", bites); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		// Under load: four users talk at once, each hearing the others.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		clients := map[byte]*beepclient.Client{}
		for _, u := range []string{"alice", "bob", "carol", "dave"} {
			join, _ := http.NewRequest(http.MethodPost, "http://"+listen+"/join/conv-1", nil)
			join.Header.Set(claim.Header, `{"userid":"`+u+`","clientid":"phone"}`)
			resp, err := http.DefaultClient.Do(join)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("join: %v %v", err, resp)
			}
			resp.Body.Close()
			c, err := beepclient.Dial(ctx, beepclient.Options{URL: "ws://" + listen + "/connect", Claim: claim.Claim{UserID: u, ClientID: "phone"}, Publish: true, Receive: 3})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			clients[u[0]] = c
		}
		// Talk without pausing: every bite stays open until shutdown.
		paceAll(t, 25, loud, clients)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		flushed := map[string]bool{}
		timeout := time.After(10 * time.Second)
		for len(flushed) < 4 {
			select {
			case m := <-bites:
				var b beeppb.Bite
				if err := proto.Unmarshal(m.Data, &b); err != nil || b.Key != "conv-1" || b.DurationMs < 400 {
					t.Fatalf("flushed bite: %v %+v", err, &b)
				}
				flushed[b.User] = true
			case <-timeout:
				t.Fatalf("bites flushed on SIGTERM for %v, want all four talkers", flushed)
			}
		}
		for id, c := range clients {
			select {
			case <-c.Bye():
			case <-time.After(10 * time.Second):
				t.Fatalf("client %c was not told (no RTCP BYE)", id)
			}
		}
		waitLogNot(t, logs, "stopped", "panic")
		if err := cmd.Wait(); err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	})
}

// waitLogNot waits for a log line containing s, failing on one with bad.
func waitLogNot(t *testing.T, logs <-chan string, s, bad string) {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case l, ok := <-logs:
			if !ok {
				t.Fatalf("router exited before logging %q", s)
			}
			l = ansi.ReplaceAllString(l, "")
			if bad != "" && strings.Contains(l, bad) {
				t.Fatalf("router logged %q: %s", bad, l)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			t.Fatalf("router did not log %q", s)
		}
	}
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// waitLog waits for a log line containing s.
func waitLog(t *testing.T, logs <-chan string, s string) {
	t.Helper()
	waitLogNot(t, logs, s, "")
}

// TestVanishedPeerIsReleased: a device that disappears without a word (pion
// v3 sends nothing the router acts on when it closes) is released by ICE
// consent within the disconnected + failed timeouts, with its goroutines
// (TestMain checks none outlives the package).
func TestVanishedPeerIsReleased(t *testing.T) {
	r := startRouter(t, nil)
	r.mustJoin("alice", "conv-1")
	a := r.dial("alice", beepclient.Options{Publish: true, Receive: 2})
	if err := pace(a, 'a', 0, 5, loud); err != nil {
		t.Fatal(err)
	}
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool { return r.a.rooms.Stats().Tracks == 1 }); err != nil {
		t.Fatal("track never started")
	}
	a.Close()
	// Test timeouts: 1 s disconnected + 1 s failed.
	if err := testutil.Until(deadline(t, 10*time.Second), func() bool {
		s := r.a.rooms.Stats()
		return s.Peers == 0 && s.Tracks == 0
	}); err != nil {
		t.Fatalf("vanished peer not released: %+v", r.a.rooms.Stats())
	}
}

// TestSenderReports checks the RTCP sender reports of slots, on both egress
// paths: a slot that sends reports its SSRC, its counts and an RTP time
// that follows its stream; a slot that has sent nothing reports nothing.
func TestSenderReports(t *testing.T) {
	for _, egress := range []string{"direct", "pion"} {
		t.Run(egress, func(t *testing.T) {
			r := startRouter(t, map[string]string{"EGRESS": egress})
			r.mustJoin("alice", "conv-1")
			r.mustJoin("bob", "conv-1")
			a := r.dial("alice", beepclient.Options{Publish: true})
			b := r.dial("bob", beepclient.Options{Receive: 2})
			const sent = 75 // 1.5 s: at least one report
			if err := pace(a, 'a', 0, sent, loud); err != nil {
				t.Fatal(err)
			}
			var ssrc uint32
			var first, last uint32
			if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
				for _, pkts := range rx {
					if len(pkts) == sent {
						ssrc, first, last = pkts[0].SSRC, pkts[0].Timestamp, pkts[sent-1].Timestamp
						return true
					}
				}
				return false
			}); err != nil {
				t.Fatalf("bob did not get all %d packets: %v", sent, err)
			}
			// Reports come every second; wait for one that counts them all.
			var sr rtcp.SenderReport
			if err := b.WaitReports(deadline(t, 5*time.Second), func(reports map[uint32]rtcp.SenderReport) bool {
				sr = reports[ssrc]
				return sr.PacketCount == sent
			}); err != nil {
				t.Fatalf("no sender report counting %d packets on SSRC %d: last %+v", sent, ssrc, sr)
			}
			if want := uint32(sent * len(frame('a', 0))); sr.OctetCount != want {
				t.Errorf("octet count %d, want %d", sr.OctetCount, want)
			}
			// The RTP time runs on from the last packet at 48 kHz.
			if d := sr.RTPTime - last; sr.RTPTime-first < last-first || d > 5*48000 {
				t.Errorf("RTP time %d is not after the last packet's %d by less than 5 s", sr.RTPTime, last)
			}
			ntp := time.Unix(int64(sr.NTPTime>>32)-2208988800, 0)
			if d := time.Since(ntp); d < -2*time.Second || d > 10*time.Second {
				t.Errorf("NTP time %v is not now", ntp)
			}
			if reports := b.SenderReports(); len(reports) != 1 {
				t.Errorf("reports on %d SSRCs, want 1 (the idle slot has sent nothing): %v", len(reports), reports)
			}
		})
	}
}
