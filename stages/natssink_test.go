package stages

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/pipeline"

	"github.com/beepvoice/router/internal/testutil"
)

// connect returns a connection to n that reconnects for ever, quickly.
func connect(t *testing.T, n *testutil.NATS) *nats.Conn {
	nc, err := nats.Connect(n.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// stream makes a JetStream stream that keeps every bite, and returns a
// function listing the seqs it holds, in order.
func stream(ctx context.Context, t *testing.T, n *testutil.NATS) func() []uint64 {
	js, err := jetstream.New(connect(t, n))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BITES", Subjects: []string{"bite"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	return func() []uint64 {
		s, err := js.Stream(ctx, "BITES")
		if err != nil {
			return nil
		}
		info, err := s.Info(ctx)
		if err != nil {
			return nil
		}
		var seqs []uint64
		for i := uint64(1); i <= info.State.LastSeq; i++ {
			m, err := s.GetMsg(ctx, i)
			if err != nil {
				continue
			}
			var b beeppb.Bite
			if err := proto.Unmarshal(m.Data, &b); err != nil {
				t.Fatalf("stored bite: %v", err)
			}
			seqs = append(seqs, b.Seq)
		}
		return seqs
	}
}

func testBite(seq uint64) *pipeline.Bite {
	return &pipeline.Bite{Conversation: "conv-1", UserID: "alice", ClientID: "phone", Seq: seq, Start: time.Now(), Duration: time.Second, Format: pipeline.FormatOggOpus, Data: make([]byte, 1000)}
}

func inOrder(seqs []uint64, n int) bool {
	if len(seqs) != n {
		return false
	}
	for i, s := range seqs {
		if s != uint64(i) {
			return false
		}
	}
	return true
}

// TestNATSOutage: bites published while NATS is down are spooled and
// arrive, all and in order, when it returns; in core and JetStream modes.
func TestNATSOutage(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*NATSSinkSettings, string)
	}{
		{"memory spool", func(*NATSSinkSettings, string) {}},
		{"directory spool", func(s *NATSSinkSettings, dir string) { s.SpoolDir = dir }},
		{"jetstream acks", func(s *NATSSinkSettings, _ string) { s.JetStream = true }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ns := testutil.StartNATS(t, testutil.JetStream)
			stored := stream(ctx, t, ns)
			s := *natsSinkKind.Defaults().(*NATSSinkSettings)
			s.StoreSubject = ""
			s.Retry = pipeline.Duration(20 * time.Millisecond)
			tt.set(&s, t.TempDir())
			k, err := NewNATSSink(connect(t, ns), s, nil)
			if err != nil {
				t.Fatal(err)
			}
			proc, _ := k.Open(nil, nil)
			for i := range 10 {
				proc.HandleBite(testBite(uint64(i)))
			}
			testutil.Eventually(t, 10*time.Second, "10 bites before the outage", func() bool { return len(stored()) == 10 })

			ns.Stop()
			testutil.Eventually(t, 10*time.Second, "the sink to see NATS gone", func() bool { return !k.nc.IsConnected() })
			for i := 10; i < 30; i++ {
				proc.HandleBite(testBite(uint64(i)))
			}
			testutil.Eventually(t, 10*time.Second, "20 spooled", func() bool { return k.Stats()["spooled"] == 20 })

			ns.Start()
			testutil.Eventually(t, 15*time.Second, "all 30 bites, in order", func() bool { return inOrder(stored(), 30) })
			if err := k.Close(ctx); err != nil {
				t.Fatal(err)
			}
			st := k.Stats()
			if st["published"] != 30 || st["spooled"] != 0 || st["drop_spool_full"]+st["drop_queue_full"]+st["drop_publish_error"]+st["drop_shutdown"] != 0 {
				t.Fatalf("stats %v", st)
			}
		})
	}
}

// TestSpoolFull: past the spool's size, bites are dropped and counted; the
// ones that fit still arrive.
func TestSpoolFull(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := testutil.StartNATS(t, testutil.JetStream)
	stored := stream(ctx, t, ns)
	nc := connect(t, ns)
	ns.Stop()
	testutil.Eventually(t, 10*time.Second, "NATS gone", func() bool { return !nc.IsConnected() })
	s := *natsSinkKind.Defaults().(*NATSSinkSettings)
	s.StoreSubject = ""
	s.SpoolBytes = 5500 // five 1 KB bites
	s.Retry = pipeline.Duration(20 * time.Millisecond)
	k, err := NewNATSSink(nc, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	proc, _ := k.Open(nil, nil)
	for i := range 8 {
		proc.HandleBite(testBite(uint64(i)))
	}
	testutil.Eventually(t, 10*time.Second, "3 drops", func() bool { return k.Stats()["drop_spool_full"] == 3 })
	ns.Start()
	testutil.Eventually(t, 15*time.Second, "the 5 spooled bites", func() bool { return inOrder(stored(), 5) })
	_ = k.Close(ctx)
}

// TestDirSpoolSurvivesRestart: bites spooled on disk by a sink that closed
// while NATS was down are sent by the next sink on the same directory.
func TestDirSpoolSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := testutil.StartNATS(t, testutil.JetStream)
	stored := stream(ctx, t, ns)
	dir := t.TempDir()
	s := *natsSinkKind.Defaults().(*NATSSinkSettings)
	s.SpoolDir = dir
	s.StoreSubject = ""
	s.Retry = pipeline.Duration(20 * time.Millisecond)

	nc := connect(t, ns)
	ns.Stop()
	testutil.Eventually(t, 10*time.Second, "NATS gone", func() bool { return !nc.IsConnected() })
	k1, err := NewNATSSink(nc, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	proc, _ := k1.Open(nil, nil)
	for i := range 4 {
		proc.HandleBite(testBite(uint64(i)))
	}
	if err := k1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if k1.Stats()["drop_shutdown"] != 0 {
		t.Fatal("a directory spool lost bites at shutdown")
	}

	ns.Start()
	k2, err := NewNATSSink(connect(t, ns), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 15*time.Second, "the 4 bites of the earlier run", func() bool { return inOrder(stored(), 4) })
	_ = k2.Close(ctx)
}
