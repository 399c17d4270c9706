package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func bite(t *testing.T, b *beeppb.Bite) []byte {
	t.Helper()
	raw, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestDescribe: one line per bite naming its conversation, speaker,
// sequence, duration, format and size; its data in the directory under a
// name of the counter's; refused messages say why.
func TestDescribe(t *testing.T) {
	ogg := &beeppb.Bite{Key: "c-42", User: "u-1", Client: "phone", Seq: 3, DurationMs: 1180,
		Format: "ogg-opus", StartMs: 1_700_000_000_123, Data: []byte("OggS....")}
	tests := []struct {
		name     string
		msg      []byte
		dir      bool
		want     string // the line, "" when an error is expected
		wantErr  string
		wantFile string // the file written, relative to the directory
	}{
		{name: "ogg", msg: bite(t, ogg), want: "22:13:20.123 c-42 u-1/phone #3 1180ms ogg-opus 8 bytes"},
		{name: "ogg kept", msg: bite(t, ogg), dir: true, want: "22:13:20.123 c-42 u-1/phone #3 1180ms ogg-opus 8 bytes", wantFile: "7.ogg"},
		{name: "rtp kept", msg: bite(t, &beeppb.Bite{Key: "c", User: "u", Client: "d", Format: "rtp", Data: []byte{0x80}}), dir: true,
			want: "00:00:00.000 c u/d #0 0ms rtp 1 bytes", wantFile: "7.rtp"},
		{name: "terminal escapes", msg: bite(t, &beeppb.Bite{Key: "c\x1b[2J", User: "../u", Client: "d\n", Format: "ogg-opus"}),
			want: "00:00:00.000 c?[2J ../u/d? #0 0ms ogg-opus 0 bytes"},
		{name: "not protobuf", msg: []byte{0xff, 0xff}, wantErr: "not a beep.Bite"},
		{name: "no format", msg: bite(t, &beeppb.Bite{Key: "c"}), wantErr: "no format"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := ""
			if tt.dir {
				dir = t.TempDir()
			}
			line, err := describe(tt.msg, dir, 7)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("line %q, error %v; want an error containing %q", line, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantFile != "" {
				tt.want += " " + filepath.Join(dir, tt.wantFile)
				var b beeppb.Bite
				_ = proto.Unmarshal(tt.msg, &b)
				if data, err := os.ReadFile(filepath.Join(dir, tt.wantFile)); err != nil || !bytes.Equal(data, b.Data) {
					t.Errorf("file %s: %q, %v; want %q", tt.wantFile, data, err, b.Data)
				}
			}
			if line != tt.want {
				t.Errorf("line %q, want %q", line, tt.want)
			}
		})
	}
}

// TestWatch subscribes to a real NATS server on loopback and prints each
// bite published on the subject, in order, until its context ends.
func TestWatch(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	before := ns.NumSubscriptions() // the server's own
	var out testutil.Buffer
	dir := filepath.Join(t.TempDir(), "new")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watch(ctx, nc, "bite", dir, &out) }()
	// watch subscribes before anything is published: wait for its interest.
	for deadline := time.Now().Add(10 * time.Second); ns.NumSubscriptions() == before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("watch did not subscribe")
		}
	}
	for _, msg := range [][]byte{
		bite(t, &beeppb.Bite{Key: "c-1", User: "u", Client: "d", Format: "ogg-opus", Data: []byte("one")}),
		{0xff},
		bite(t, &beeppb.Bite{Key: "c-2", User: "u", Client: "d", Format: "ogg-opus", Data: []byte("three")}),
	} {
		if err := nc.Publish("bite", msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Publish("other", bite(t, &beeppb.Bite{Key: "elsewhere", Format: "rtp"})); err != nil {
		t.Fatal(err)
	}
	want := []string{"c-1 u/d #0 0ms ogg-opus 3 bytes " + filepath.Join(dir, "1.ogg"), "message 2: not a beep.Bite", "c-2 u/d #0 0ms ogg-opus 5 bytes " + filepath.Join(dir, "3.ogg")}
	for deadline := time.Now().Add(10 * time.Second); strings.Count(out.String(), "\n") < len(want); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("printed %q, want %d lines", out.String(), len(want))
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(want) {
		t.Fatalf("printed %q, want %d lines", out.String(), len(want))
	}
	for i, l := range lines {
		if !strings.Contains(l, want[i]) {
			t.Errorf("line %d: %q, want it to contain %q", i+1, l, want[i])
		}
	}
	if data, err := os.ReadFile(filepath.Join(dir, "3.ogg")); err != nil || string(data) != "three" {
		t.Errorf("3.ogg: %q, %v", data, err)
	}
}
