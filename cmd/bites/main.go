// Command bites prints the bites a router publishes on NATS, one line each,
// and can keep their audio: a way to watch what the router makes in -dev.
//
//	NATS_EMBEDDED_LISTEN=127.0.0.1:4222 go run ./cmd/router -dev
//	go run ./cmd/bites -dir /tmp/bites      # in a second terminal
//
// Each line gives the bite's start, conversation, speaker (user/device),
// sequence number, duration, format and size; with -dir, its data is
// written there as <n>.ogg (Ogg Opus, which opusdec and browsers play) or
// <n>.rtp, n counting from 1. It stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
)

func main() {
	url := flag.String("nats", "nats://127.0.0.1:4222", "NATS URL (the router's NATS_EMBEDDED_LISTEN, or its NATS)")
	subject := flag.String("subject", "bite", "subject the router's nats-sink publishes bites on (its bite_subject)")
	dir := flag.String("dir", "", "write each bite's data into this directory; empty: print only")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	nc, err := nats.Connect(*url, nats.Name("beep bites"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "bites: NATS %s: %v\n", *url, err)
		os.Exit(1)
	}
	defer nc.Close()
	fmt.Fprintf(os.Stderr, "bites: watching %q on %s\n", *subject, *url)
	if err := watch(ctx, nc, *subject, *dir, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bites: %v\n", err)
		os.Exit(1)
	}
}

// watch prints the bites published on subject to w, one line each, until
// ctx ends, writing their data into dir when it is not empty.
func watch(ctx context.Context, nc *nats.Conn, subject, dir string, w io.Writer) error {
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(subject, msgs)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("subscribe %s: %w", subject, err)
	}
	n := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			n++
			line, err := describe(m.Data, dir, n)
			if err != nil {
				line = fmt.Sprintf("message %d: %v", n, err)
			}
			if _, err := fmt.Fprintln(w, line); err != nil {
				return err
			}
		}
	}
}

// describe decodes one bite message into its line, writing its data into
// dir (when not empty) as file n. File names come from n only: the bite's
// fields are the clients' ids, not paths.
func describe(msg []byte, dir string, n int) (string, error) {
	var b beeppb.Bite
	if err := proto.Unmarshal(msg, &b); err != nil {
		return "", fmt.Errorf("not a beep.Bite: %w", err)
	}
	if b.Format == "" {
		return "", errors.New("not a beep.Bite: no format")
	}
	line := fmt.Sprintf("%s %s %s/%s #%d %dms %s %d bytes",
		time.UnixMilli(int64(b.StartMs)).UTC().Format("15:04:05.000"),
		printable(b.Key), printable(b.User), printable(b.Client), b.Seq, b.DurationMs, b.Format, len(b.Data))
	if dir == "" {
		return line, nil
	}
	ext := ".ogg"
	if b.Format != "ogg-opus" {
		ext = ".rtp"
	}
	name := filepath.Join(dir, fmt.Sprintf("%d%s", n, ext))
	if err := os.WriteFile(name, b.Data, 0o644); err != nil {
		return "", err
	}
	return line + " " + name, nil
}

// printable replaces what a terminal would interpret (control characters,
// escapes) in an id by "?".
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}
