package room

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/rtc"
)

// TestReplacementLogThrottled: a device that connects again and again,
// replacing its own peer each time, is a normal client action: the router
// logs its replacements throttled, at Info, never at ERROR, and closes
// every replaced peer.
func TestReplacementLogThrottled(t *testing.T) {
	logs := &testutil.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m, err := New(Config{Media: rtc.Config{ICEIPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, Sink: nopSink{}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())

	const n = 200
	var last *rtc.Peer
	for range n {
		p := newPeer(t, m, "alice", "phone")
		if last != nil && !closed(last) {
			t.Fatal("the replaced peer is not closed")
		}
		last = p
	}
	testutil.Eventually(t, 10*time.Second, "one peer left", func() bool { return m.Stats().Peers == 1 })

	out := logs.String()
	replaced := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "device replaced") {
			replaced++
		}
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("ERROR logged for a normal client action: %s", line)
		}
	}
	if replaced > 5 {
		t.Errorf("%d replacements of one device logged %d replacement lines, want at most 5", n-1, replaced)
	}
	if replaced == 0 {
		t.Error("no replacement logged at all")
	}
}
