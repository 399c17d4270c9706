// Package libopus wraps the reference Opus codec (libopus, through cgo) for
// the mix package's tests and benchmarks: it is the yardstick the pure-Go
// codec is measured against, not part of the mixer.
//
// It is built only with the opus tag (Debian libopus-dev and pkg-config),
// so that `go build ./...` and `go test ./...` need no C library:
//
//	go test -tags opus -run Codec -bench Codec ./mix
package libopus
