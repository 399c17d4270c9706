package room_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testpeer"
	"github.com/beepvoice/router/internal/testroom"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// The memory a router holds per subscriber of a video feed. The benchmark
// (the parent) runs the router; the pion clients, publisher and
// subscribers alike, run in a child process, this test binary re-executed
// on TestFeedMemClient, so that the parent's heap is the router's alone.
// They signal by JSON lines: the parent writes to the child's stdin, the
// child to its stdout (where the lines that are not JSON, the testing
// package's, are skipped).

// feedMemEnv, set in the child's environment, says how to reach the
// parent: "stdio", the one way there is.
const feedMemEnv = "ROUTER_FEEDMEM_CLIENT"

// feedMemProfileEnv, if set to a directory, makes the benchmark write heap
// profiles there at its baseline and at its measurement
// (feedmem-<N>-base.pprof, feedmem-<N>.pprof): compare them with
// `go tool pprof -sample_index=inuse_space -diff_base base.pprof ...`.
const feedMemProfileEnv = "ROUTER_FEEDMEM_PROFILE"

// memMsg is one signalling line, either way.
type memMsg struct {
	// Type is, from the child: pub-offer (SDP), pub-up, answer (ID, SDP),
	// video (ID: the feed has received a whole video frame), error (Err);
	// from the parent: pub-answer (SDP), offer (ID, SDP), quit.
	Type string `json:"type"`
	ID   int    `json:"id,omitempty"`
	SDP  string `json:"sdp,omitempty"`
	Err  string `json:"err,omitempty"`
}

// memUsage is a snapshot of the parent process, after two GCs.
type memUsage struct {
	heapInuse, heapAlloc, stackInuse, rss uint64
	goroutines                            int
}

func readMemUsage(tb testing.TB) memUsage {
	tb.Helper()
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memUsage{heapInuse: ms.HeapInuse, heapAlloc: ms.HeapAlloc, stackInuse: ms.StackInuse, rss: vmRSS(tb), goroutines: runtime.NumGoroutine()}
}

// vmRSS returns the process's resident set size, from /proc/self/status.
func vmRSS(tb testing.TB) uint64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatalf("read /proc/self/status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" && f[2] == "kB" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				tb.Fatalf("VmRSS %q: %v", l, err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// BenchmarkFeedMemory measures the router's memory per connected video
// feed: one publisher sends VP8 (30 fps) and Opus; N subscribers each
// connect a feed of it; once every feed is connected and has received
// video, and media has flowed 3 s more, the parent's heap in use (after
// two GCs), its RSS and its goroutines are compared with a baseline taken
// with the publisher up and no feed. Run it as
//
//	go test -run XXX -bench FeedMemory -benchtime 1x ./room
//
// b.N is ignored: each sub-benchmark measures once.
func BenchmarkFeedMemory(b *testing.B) {
	for _, n := range []int{20, 50} {
		b.Run(fmt.Sprintf("feeds=%d", n), func(b *testing.B) { benchFeedMemory(b, n) })
	}
}

func benchFeedMemory(b *testing.B, n int) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The router: its log is discarded but for warnings, shown if the
	// benchmark fails.
	m := testroom.NewManager(b, rtc.Config{}, testutil.Logger(b, slog.LevelWarn))
	child := startMemClient(b, ctx)

	// The publisher, in the child: it offers, the router answers.
	pub, err := m.Enter("conv-1", room.Identity{ID: "pub", Claim: claim.Claim{UserID: "pub", ClientID: "pub-1"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pub.Leave)
	msg := child.expect(b, ctx, "pub-offer")
	peer, err := pub.Publisher()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := peer.Answer(msg.SDP); err != nil {
		b.Fatalf("publisher answer: %v", err)
	}
	child.send(b, memMsg{Type: "pub-answer", SDP: peer.WaitGathered(ctx)})
	child.expect(b, ctx, "pub-up")
	select {
	case <-peer.Connected():
	case <-ctx.Done():
		b.Fatal("the publisher did not connect")
	}
	if err := testutil.Until(ctx, func() bool { s := m.Stats(); return s.Tracks >= 2 && s.PacketsIn > 100 }); err != nil {
		b.Fatalf("the router has not the publisher's two tracks: %+v", m.Stats())
	}
	time.Sleep(time.Second) // the publisher's buffers and caches fill up

	direct := m.Stats().DirectPeers // the publisher's
	base := readMemUsage(b)
	writeHeapProfile(b, fmt.Sprintf("feedmem-%d-base.pprof", n))
	feedsStart := time.Now()

	// The feeds: the router offers, the child answers, and says when video
	// arrives.
	feeds := make([]*room.Feed, n)
	b.Cleanup(func() {
		for _, f := range feeds {
			if f != nil {
				f.Close()
			}
		}
	})
	for i := range feeds {
		id := fmt.Sprintf("sub-%d", i)
		p, err := m.Enter("conv-1", room.Identity{ID: id, Claim: claim.Claim{UserID: id, ClientID: id + "-1"}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Leave)
		f, err := p.Subscribe(pub)
		if err != nil {
			b.Fatalf("%s subscribes: %v", id, err)
		}
		feeds[i] = f
		offer, err := f.Peer().Offer(ctx)
		if err != nil {
			b.Fatalf("feed %d offer: %v", i, err)
		}
		child.send(b, memMsg{Type: "offer", ID: i, SDP: offer})
	}
	answered, video := 0, make([]bool, n)
	for seen := 0; answered < n || seen < n; {
		msg := child.next(b, ctx)
		if msg.ID < 0 || msg.ID >= n {
			b.Fatalf("child: %+v for no feed", msg)
		}
		switch msg.Type {
		case "answer":
			if err := feeds[msg.ID].Peer().SetAnswer(msg.SDP); err != nil {
				b.Fatalf("feed %d answer: %v", msg.ID, err)
			}
			answered++
		case "video":
			if !video[msg.ID] {
				video[msg.ID] = true
				seen++
			}
		default:
			b.Fatalf("child: unexpected %+v", msg)
		}
	}
	for i, f := range feeds {
		select {
		case <-f.Peer().Connected():
		case <-ctx.Done():
			b.Fatalf("feed %d did not connect", i)
		}
	}
	allUp := time.Since(feedsStart)
	before := m.Stats()
	time.Sleep(3 * time.Second) // media flows
	after := m.Stats()
	if after.DownTracks != 2*n || after.DirectPeers != direct+n {
		b.Errorf("router stats: %d down-tracks, %d direct peers, want %d and %d", after.DownTracks, after.DirectPeers, 2*n, direct+n)
	}

	got := readMemUsage(b)
	writeHeapProfile(b, fmt.Sprintf("feedmem-%d.pprof", n))
	heap := float64(int64(got.heapInuse)-int64(base.heapInuse)) / float64(n)
	alloc := float64(int64(got.heapAlloc)-int64(base.heapAlloc)) / float64(n)
	rss := float64(int64(got.rss)-int64(base.rss)) / float64(n)
	stack := float64(int64(got.stackInuse)-int64(base.stackInuse)) / float64(n)
	gs := float64(got.goroutines-base.goroutines) / float64(n)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(heap, "heap-B/feed")
	b.ReportMetric(rss, "rss-B/feed")
	b.ReportMetric(gs, "goroutines/feed")
	b.Logf("%d feeds up (connected, video received) in %v; %.0f packets/s forwarded during the 3 s; overload drops %d",
		n, allUp.Round(time.Millisecond), float64(after.PacketsOut-before.PacketsOut)/3, after.Overload)
	b.Logf("baseline: heap in use %.1f MiB, RSS %.1f MiB, %d goroutines; with feeds: %.1f MiB, %.1f MiB, %d",
		mib(base.heapInuse), mib(base.rss), base.goroutines, mib(got.heapInuse), mib(got.rss), got.goroutines)
	b.Logf("per feed: heap in use %.1f KiB, heap alloc %.1f KiB, stacks %.1f KiB, RSS %.1f KiB, %.1f goroutines",
		heap/1024, alloc/1024, stack/1024, rss/1024, gs)
	if got.heapInuse <= base.heapInuse {
		b.Errorf("heap in use did not grow: %d then %d", base.heapInuse, got.heapInuse)
	}
	b.Cleanup(func() { b.Logf("run took %v", time.Since(start).Round(100*time.Millisecond)) })
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// writeHeapProfile writes a heap profile named name into the directory
// ROUTER_FEEDMEM_PROFILE names, if set, and the goroutines, as text, into
// name.goroutines.
func writeHeapProfile(tb testing.TB, name string) {
	dir := os.Getenv(feedMemProfileEnv)
	if dir == "" {
		return
	}
	for _, p := range []struct {
		profile, file string
		debug         int
	}{{"heap", name, 0}, {"goroutine", name + ".goroutines", 1}} {
		f, err := os.Create(filepath.Join(dir, p.file))
		if err != nil {
			tb.Fatal(err)
		}
		err = pprof.Lookup(p.profile).WriteTo(f, p.debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// memClient is the child process, from the parent's side.
type memClient struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	msgs   chan memMsg
	output *testutil.Buffer // its stderr, and the stdout lines not JSON
	done   chan struct{}    // the reader has seen stdout end
}

// startMemClient starts the child. Cleanup tells it to quit and waits for
// it to exit.
func startMemClient(tb testing.TB, ctx context.Context) *memClient {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestFeedMemClient$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), feedMemEnv+"=stdio")
	c := &memClient{cmd: cmd, msgs: make(chan memMsg, 1024), output: &testutil.Buffer{}, done: make(chan struct{})}
	cmd.Stderr = c.output
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	c.enc = json.NewEncoder(c.stdin)
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go c.read(stdout)
	tb.Cleanup(func() {
		_ = c.enc.Encode(memMsg{Type: "quit"})
		_ = c.stdin.Close()
		exited := make(chan error, 1)
		go func() { <-c.done; exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			if err != nil {
				tb.Errorf("client process: %v; its output:\n%s", err, c.output.String())
			}
		case <-time.After(waitLong):
			_ = cmd.Process.Kill()
			<-exited
			tb.Errorf("client process did not exit; its output:\n%s", c.output.String())
		}
	})
	return c
}

// read passes the child's JSON lines to msgs, and keeps the others.
func (c *memClient) read(stdout io.Reader) {
	defer close(c.done)
	defer close(c.msgs)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var msg memMsg
		if bytes.HasPrefix(line, []byte("{")) && json.Unmarshal(line, &msg) == nil {
			c.msgs <- msg
			continue
		}
		_, _ = c.output.Write(append(line, '\n'))
	}
	_, _ = io.Copy(io.Discard, stdout)
}

func (c *memClient) send(tb testing.TB, msg memMsg) {
	tb.Helper()
	if err := c.enc.Encode(msg); err != nil {
		tb.Fatalf("to client process: %v", err)
	}
}

// next returns the child's next message; an error message fails tb.
func (c *memClient) next(tb testing.TB, ctx context.Context) memMsg {
	tb.Helper()
	select {
	case msg, ok := <-c.msgs:
		if !ok {
			tb.Fatalf("client process ended; its output:\n%s", c.output.String())
		}
		if msg.Type == "error" {
			tb.Fatalf("client process: %s", msg.Err)
		}
		return msg
	case <-ctx.Done():
		tb.Fatalf("no message from the client process; its output:\n%s", c.output.String())
		return memMsg{}
	}
}

func (c *memClient) expect(tb testing.TB, ctx context.Context, typ string) memMsg {
	tb.Helper()
	msg := c.next(tb, ctx)
	if msg.Type != typ {
		tb.Fatalf("client process: got %+v, want %s", msg, typ)
	}
	return msg
}

// TestFeedMemClient is the child of BenchmarkFeedMemory, not a test: it
// skips unless ROUTER_FEEDMEM_CLIENT is set. It publishes the VP8 fixture
// and Opus, answers the router's feed offers, and tells the parent when
// each feed has received a whole video frame, until told to quit or its
// stdin ends.
func TestFeedMemClient(t *testing.T) {
	if os.Getenv(feedMemEnv) == "" {
		t.Skip("the client process of BenchmarkFeedMemory")
	}
	frames := testmedia.Frames(t, testmedia.VP8(t))
	ctx := deadline(t, 3*time.Minute)
	var outMu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	send := func(msg memMsg) {
		outMu.Lock()
		defer outMu.Unlock()
		if err := enc.Encode(msg); err != nil {
			t.Errorf("to parent: %v", err)
		}
	}
	fail := func(format string, args ...any) {
		err := fmt.Sprintf(format, args...)
		send(memMsg{Type: "error", Err: err})
		t.Error(err)
	}

	pub := memPublisher(t, ctx, frames, send)

	var (
		mu   sync.Mutex
		subs []*testpeer.Peer
		wg   sync.WaitGroup // the goroutines answering offers
	)
	quit := make(chan struct{}) // closed when the parent is done
	defer func() {
		close(quit)
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, s := range subs {
			s.Close()
		}
	}()
	api := testpeer.API(t)

	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var msg memMsg
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			fail("from parent: %v", err)
			return
		}
		switch msg.Type {
		case "pub-answer":
			if err := pub.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: msg.SDP}); err != nil {
				fail("publisher: apply answer: %v", err)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-pub.Connected():
				case <-quit:
					return
				case <-ctx.Done():
					fail("publisher: not connected")
					return
				}
				pub.Media.Start(nil)
				send(memMsg{Type: "pub-up"})
			}()
		case "offer":
			s, err := testpeer.NewPeer(testpeer.Options{API: api, CountOnly: true})
			if err != nil {
				fail("subscriber %d: %v", msg.ID, err)
				return
			}
			mu.Lock()
			subs = append(subs, s)
			mu.Unlock()
			wg.Add(1)
			go func(id int, offer string) {
				defer wg.Done()
				if err := s.PC.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: offer}); err != nil {
					fail("subscriber %d: apply offer: %v", id, err)
					return
				}
				answer, err := s.PC.CreateAnswer(nil)
				if err != nil {
					fail("subscriber %d: answer: %v", id, err)
					return
				}
				sdp, err := testpeer.Gather(ctx, s.PC, answer)
				if err != nil {
					fail("subscriber %d: gather: %v", id, err)
					return
				}
				send(memMsg{Type: "answer", ID: id, SDP: sdp})
				select {
				case <-s.Frame():
					send(memMsg{Type: "video", ID: id})
				case <-quit:
				case <-ctx.Done():
					fail("subscriber %d: no video", id)
				}
			}(msg.ID, msg.SDP)
		case "quit":
			return
		default:
			fail("from parent: unexpected %+v", msg)
			return
		}
	}
}

// memPublisher makes the publisher client and sends its offer; the caller
// applies the answer and starts its Media once connected. Cleanup closes
// it.
func memPublisher(t *testing.T, ctx context.Context, frames []testmedia.Frame, send func(memMsg)) *testpeer.Peer {
	t.Helper()
	c, sdp := offerMedia(t, ctx, "pub", webrtc.MimeTypeVP8, frames)
	send(memMsg{Type: "pub-offer", SDP: sdp})
	return c
}
