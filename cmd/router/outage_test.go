package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// TestNATSOutageMidCall stops NATS in the middle of a call for
// BEEP_OUTAGE (default 2s): audio keeps flowing, and every bite of the call
// reaches NATS, in order, once it is back.
func TestNATSOutageMidCall(t *testing.T) {
	outage := 2 * time.Second
	if v := os.Getenv("BEEP_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		outage = d
	}
	ns := testutil.StartNATS(t, testutil.JetStream)
	url := ns.URL()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	obs, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close()
	js, _ := jetstream.New(obs)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BITES", Subjects: []string{"bite"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}

	a := startExternal(t, url)
	r := &testRouter{t: t, a: a, perms: newPerms(t)}
	for _, u := range []string{"alice", "bob"} {
		if code := r.join(u, "conv-1"); code != 200 {
			t.Fatalf("join: %d", code)
		}
	}
	alice := r.dial("alice", beepclient.Options{Publish: true})
	bob := r.dial("bob", beepclient.Options{Receive: 1})

	// Utterances of 200 ms speech and 600 ms silence: one bite each.
	utter := func(i int) int {
		if i%40 < 10 {
			return 10
		}
		return 127
	}
	talk := func(from, n int) {
		if err := pace(alice, 'a', from, n, utter); err != nil {
			t.Error(err)
		}
	}
	received := func() int {
		n, _ := heard(bob.Received())
		return n['a']
	}
	talk(0, 80) // two utterances with NATS up

	ns.Stop()
	before := received()
	done := make(chan struct{})
	sentDuring := int(outage/(20*time.Millisecond)) / 40 * 40
	go func() { defer close(done); talk(1000, sentDuring) }()
	<-done
	during := received() - before
	ns.Start()
	talk(5000, 80) // two more after
	alice.Close()  // ends the track: the last bite flushes

	want := 4 + sentDuring/40
	stream, err := js.Stream(ctx, "BITES")
	if err != nil {
		t.Fatal(err)
	}
	if err := testutil.Until(deadline(t, 30*time.Second), func() bool {
		info, err := stream.Info(ctx)
		return err == nil && int(info.State.Msgs) >= want
	}); err != nil {
		info, _ := stream.Info(ctx)
		t.Fatalf("stream holds %d bites, want %d", info.State.Msgs, want)
	}
	for i := 1; i <= want; i++ {
		m, err := stream.GetMsg(ctx, uint64(i))
		if err != nil {
			t.Fatal(err)
		}
		var b beeppb.Bite
		if err := proto.Unmarshal(m.Data, &b); err != nil || b.Seq != uint64(i-1) {
			t.Fatalf("bite %d: seq %d, err %v: not all, or not in order", i, b.Seq, err)
		}
	}
	if during < sentDuring*9/10 {
		t.Fatalf("bob heard %d packets during a %v NATS outage: audio did not keep flowing", during, outage)
	}
	t.Logf("outage %v: %d packets forwarded during it, %d bites, 0 lost, in order", outage, during, want)
}
