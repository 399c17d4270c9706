package stages

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/pipeline"
)

// tmpFiles lists the .tmp files in dir.
func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.tmp"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestSpoolDiskFull: a spooled bite the disk refuses (a real ENOSPC: the
// spool's next file is a link to /dev/full, where every write fails so) is
// dropped, counted apart from the spool's size bound and logged with the OS
// cause, throttled; no .tmp file stays; the next bite is spooled and sent.
func TestSpoolDiskFull(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full:", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := testutil.StartNATS(t, testutil.JetStream)
	stored := stream(ctx, t, ns)
	nc := connect(t, ns)
	ns.Stop()
	testutil.Eventually(t, 10*time.Second, "NATS gone", func() bool { return !nc.IsConnected() })

	dir := t.TempDir()
	logs := &testutil.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	s := *natsSinkKind.Defaults().(*NATSSinkSettings)
	s.StoreSubject = ""
	s.SpoolDir = dir
	s.Retry = pipeline.Duration(20 * time.Millisecond)
	k, err := NewNATSSink(nc, s, log)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close(ctx)

	// The first message of an empty spool is file 0.
	full := filepath.Join(dir, "00000000000000000000.bite.tmp")
	proc, _ := k.Open(nil, nil)
	for i := range 3 {
		if err := os.Symlink("/dev/full", full); err != nil {
			t.Fatal(err)
		}
		proc.HandleBite(testBite(uint64(i)))
		testutil.Eventually(t, 10*time.Second, "the write failure handled", func() bool {
			return k.Stats()["drop_spool_write"] == uint64(i+1) || k.Stats()["drop_spool_full"] > 0
		})
		if st := k.Stats(); st["drop_spool_write"] != uint64(i+1) || st["drop_spool_full"] != 0 {
			t.Fatalf("a bite the disk refused counted as %v, want drop_spool_write %d and drop_spool_full 0", st, i+1)
		}
		if tmp := tmpFiles(t, dir); len(tmp) != 0 {
			t.Fatalf("a failed spool write left %v", tmp)
		}
	}
	out := logs.String()
	if !strings.Contains(out, "no space left on device") {
		t.Errorf("the log does not name the OS cause:\n%s", out)
	}
	if strings.Contains(out, "spool is full") {
		t.Errorf("a disk failure logged as the spool's bound:\n%s", out)
	}
	if n := strings.Count(out, "no space left on device"); n != 1 {
		t.Errorf("3 failures logged %d times, want once (throttled):\n%s", n, out)
	}

	// The cause gone, the next bite is spooled, and sent when NATS returns.
	proc.HandleBite(testBite(0))
	testutil.Eventually(t, 10*time.Second, "the next bite spooled", func() bool { return k.Stats()["spooled"] == 1 })
	ns.Start()
	testutil.Eventually(t, 15*time.Second, "the next bite sent", func() bool { return inOrder(stored(), 1) })
	if st := k.Stats(); st["published"] != 1 || st["drop_spool_write"] != 3 {
		t.Errorf("stats %v, want published 1, drop_spool_write 3", st)
	}
}
