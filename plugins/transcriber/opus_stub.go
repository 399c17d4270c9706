//go:build !opus

package main

import "errors"

// The Opus decoder needs libopus through cgo (Debian libopus-dev). It is
// built only with the opus tag, so that `go build ./...` and `go test ./...`
// work on a machine without libopus; this stub takes its place:
//
//	go build -tags opus ./plugins/transcriber
const haveOpus = false

func decodeOggOpus([]byte) ([]int16, error) {
	return nil, errors.New("beep-transcriber was built without libopus: go build -tags opus ./plugins/transcriber (needs libopus-dev)")
}
