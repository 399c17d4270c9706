package main

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any goroutine outlives the tests: every
// router is shut down in its test's cleanup, so peers, track readers, RTCP
// drains, signalling sockets, the NATS sink and embedded NATS must all end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
