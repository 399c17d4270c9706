package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"golang.org/x/sys/unix"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
)

// floorDevice joins conv on the floor and connects.
func floorDevice(ctx context.Context, t *testing.T, f *floor, user, conv string, publish bool, receive int) *beepclient.Client {
	t.Helper()
	cl := claim.Claim{UserID: user, ClientID: user + "-dev"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.URL()+"/join/"+conv, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(cl)
	req.Header.Set(claim.Header, string(b))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("join: HTTP %d", resp.StatusCode)
	}
	c, err := beepclient.Dial(ctx, beepclient.Options{
		URL: "ws" + strings.TrimPrefix(f.URL(), "http") + "/connect", Claim: cl,
		Publish: publish, Receive: receive, NoNACK: true,
	})
	if err != nil {
		t.Fatalf("%s: dial the floor: %v", user, err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestFloorForwards connects real pion clients to the floor over loopback
// (DTLS-SRTP negotiated through its signalling) — two publishers that hear
// each other and two subscribers with two slots — and checks that every
// receiver gets every other publisher's packets on a slot of its own, in
// order with consecutive sequence numbers, and that the floor sent each
// packet's copies with exactly one sendmmsg.
func TestFloorForwards(t *testing.T) {
	f, err := startFloor(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := f.close(); err != nil && err != http.ErrServerClosed {
			t.Errorf("floor close: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pubs := []*beepclient.Client{
		floorDevice(ctx, t, f, "p0", "c", true, 1),
		floorDevice(ctx, t, f, "p1", "c", true, 1),
	}
	subs := []*beepclient.Client{
		floorDevice(ctx, t, f, "s0", "c", false, 2),
		floorDevice(ctx, t, f, "s1", "c", false, 2),
	}
	// Every peer attached: each publisher's route has 3 copies.
	for {
		t1 := f.table.Load()
		ok := len(t1.routes) == 2
		for _, r := range t1.routes {
			ok = ok && len(r.copies) == 3
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("floor routes never complete: %d routes", len(t1.routes))
		case <-time.After(10 * time.Millisecond):
		}
	}
	in0, calls0, copies0 := f.stats.packetsIn.Load(), f.stats.sendCalls.Load(), f.stats.copies.Load()

	const n = 30
	for i := range n {
		for pi, p := range pubs {
			payload := make([]byte, 40)
			payload[0] = 0xf8
			binary.BigEndian.PutUint32(payload[1:5], uint32(pi))
			binary.BigEndian.PutUint32(payload[5:9], uint32(i))
			if err := p.Send(payload, 20); err != nil {
				t.Fatal(err)
			}
		}
	}
	// want[c] is how many publishers client c hears.
	check := func(name string, c *beepclient.Client, hears []int) {
		t.Helper()
		err := c.WaitFor(ctx, func(m map[string][]beepclient.Packet) bool {
			full := 0
			for _, ps := range m {
				if len(ps) >= n {
					full++
				}
			}
			return full == len(hears)
		})
		if err != nil {
			t.Fatalf("%s: not every slot received %d packets: %v", name, n, err)
		}
		seen := map[int]bool{}
		for mid, ps := range c.Received() {
			pub := int(binary.BigEndian.Uint32(ps[0].Payload[1:5]))
			seen[pub] = true
			for i, p := range ps {
				if got := int(binary.BigEndian.Uint32(p.Payload[1:5])); got != pub {
					t.Errorf("%s slot %s: packet %d from publisher %d, the slot carries %d", name, mid, i, got, pub)
				}
				if i > 0 && p.SequenceNumber != ps[i-1].SequenceNumber+1 {
					t.Errorf("%s slot %s: sequence %d after %d", name, mid, p.SequenceNumber, ps[i-1].SequenceNumber)
				}
				if i > 0 && binary.BigEndian.Uint32(p.Payload[5:9]) <= binary.BigEndian.Uint32(ps[i-1].Payload[5:9]) {
					t.Errorf("%s slot %s: packets out of order", name, mid)
				}
			}
		}
		for _, h := range hears {
			if !seen[h] {
				t.Errorf("%s does not hear publisher %d (hears %v)", name, h, seen)
			}
		}
	}
	check("p0", pubs[0], []int{1})
	check("p1", pubs[1], []int{0})
	check("s0", subs[0], []int{0, 1})
	check("s1", subs[1], []int{0, 1})

	in, calls, copies := f.stats.packetsIn.Load()-in0, f.stats.sendCalls.Load()-calls0, f.stats.copies.Load()-copies0
	if in != 2*n {
		t.Errorf("floor decrypted %d packets, want %d", in, 2*n)
	}
	if copies != 3*in {
		t.Errorf("%d copies of %d packets, want 3 each", copies, in)
	}
	if calls != in {
		t.Errorf("%d sendmmsg for %d fan-outs of 3 copies, want one each", calls, in)
	}
	if e := f.stats.sendErrs.Load(); e != 0 {
		t.Errorf("%d send errors", e)
	}
}

// TestReadTasks reads this process's threads: context switches and time
// on CPU only grow.
func TestReadTasks(t *testing.T) {
	a, err := readTasks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { // a goroutine that blocks and wakes: context switches
		for range 50 {
			time.Sleep(time.Millisecond)
		}
		close(done)
	}()
	<-done
	b, err := readTasks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	d := b.sub(a)
	if b.Threads < 1 || b.OnCPU <= 0 || d.Voluntary == 0 {
		t.Errorf("tasks %+v, then %+v: want threads, CPU time and new voluntary switches", a, b)
	}
}

// TestParsePerfCSV reads perf stat's CSV lines, skipping what it could
// not count.
func TestParsePerfCSV(t *testing.T) {
	out := "# started\n" +
		"123456,,raw_syscalls:sys_enter,20012345,100.00,,\n" +
		"2000,,syscalls:sys_enter_sendmmsg,20012345,100.00,,\n" +
		"<not counted>,,syscalls:sys_enter_sendto,0,100.00,,\n" +
		"17,,syscalls:sys_enter_recvmmsg,20012345,100.00,,\n"
	got := parsePerfCSV([]byte(out))
	want := map[string]uint64{"syscalls": 123456, "sendmmsg": 2000, "recvmmsg": 17}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parsePerfCSV = %v, want %v", got, want)
	}
}

// TestFloorRun runs one small load against the harness and then against
// the floor, both subprocesses, through the command line: the floor
// delivers everything, and the router's figures come as ratios to its.
func TestFloorRun(t *testing.T) {
	js := filepath.Join(t.TempDir(), "floor.json")
	var out, errb bytes.Buffer
	code := run([]string{"-router-self", "-floor", "-publishers", "2", "-subscribers", "2", "-publisher-slots", "1",
		"-settle", "300ms", "-hold", "2s", "-grace", "500ms", "-rate", "100", "-json", js, "-timeout", "90s"}, &out, &errb)
	t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("exit code %d", code)
	}
	rep := readReport(t, js)
	if len(rep.Runs) != 1 {
		t.Fatalf("%d runs, want 1", len(rep.Runs))
	}
	r := rep.Runs[0]
	fl := r.Floor
	if fl == nil || fl.Router == nil || fl.Router.PerEgress == nil {
		t.Fatalf("no floor run with figures: %+v", fl)
	}
	// 2 publishers × 50 packets/s × 2 s, to 2 subscribers and to the
	// other publisher.
	if fl.Egress.DeliveryPct < 90 || fl.Loss.Pct > 2 || fl.Egress.ToSubscribers == 0 || fl.Egress.ToPublishers == 0 {
		t.Errorf("floor: delivery %.1f %%, loss %.2f %%, %d to subscribers, %d to publishers",
			fl.Egress.DeliveryPct, fl.Loss.Pct, fl.Egress.ToSubscribers, fl.Egress.ToPublishers)
	}
	if r.VsFloor == nil || r.VsFloor.CPU <= 0 {
		t.Errorf("no CPU ratio to the floor: %+v", r.VsFloor)
	}
	pe := r.Router.PerEgress
	if pe == nil || pe.CPUUS <= 0 || pe.UserUS+pe.SysUS <= 0 || pe.VoluntaryCtxSw+pe.InvoluntaryCtxSw <= 0 {
		t.Errorf("router per egress packet: %+v", pe)
	}
	if !strings.Contains(out.String(), "2x2 Kp=1 floor") || !strings.Contains(out.String(), "×floor CPU") {
		t.Errorf("no floor row or ratio column in:\n%s", out.String())
	}
}

// TestFloorPacketPathAllocates checks that the floor's per-packet work —
// decrypt, three rewritten and encrypted copies, one sendmmsg to real
// loopback sockets — allocates nothing.
func TestFloorPacketPathAllocates(t *testing.T) {
	// Only the packet path's parts: no signalling, ICE mux or HTTP
	// server, whose goroutines' allocations would count too.
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	f := &floor{conn: conn, raw: raw}
	key, salt := bytes.Repeat([]byte{3}, 16), bytes.Repeat([]byte{5}, 12)
	ctx := func() *srtp.Context {
		c, err := srtp.CreateContext(key, salt, srtp.ProtectionProfileAeadAes128Gcm)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pub := &floorPeer{publisher: true, addr: netip.MustParseAddrPort("127.0.0.1:9"), dec: ctx()}
	route := &floorRoute{pub: pub}
	var recvs []*net.UDPConn
	for i := range 3 {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadBuffer(1 << 20)
		recvs = append(recvs, c)
		p := &floorPeer{addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), enc: ctx()}
		p.sa = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: p.addr.Addr().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.sa.Port))[:], p.addr.Port())
		route.copies = append(route.copies, &floorSlot{peer: p, ssrc: uint32(100 + i), pt: floorOpusPT})
	}
	f.table.Store(&floorTable{routes: map[netip.AddrPort]*floorRoute{pub.addr: route}})
	enc := ctx()
	o := newFloorIO(f)
	seq := uint16(0)
	packet := func() []byte {
		seq++
		raw, err := (&rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, SSRC: 1}, Payload: make([]byte, 80)}).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		ct, err := enc.EncryptRTP(nil, raw, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ct
	}
	pkts := make([][]byte, 60)
	for i := range pkts {
		pkts[i] = packet()
	}
	o.handle(pkts[0], pub.addr) // first use sizes the buffers
	i := 1
	allocs := testing.AllocsPerRun(50, func() {
		o.handle(pkts[i], pub.addr)
		i++
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per packet, want 0", allocs)
	}
	if got, want := f.stats.sendCalls.Load(), f.stats.packetsIn.Load(); got != want || want < 50 {
		t.Errorf("%d sendmmsg for %d packets", got, want)
	}
	buf := make([]byte, 1500)
	for _, c := range recvs {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Errorf("a receiver got nothing: %v", err)
		}
	}
}
