package stages

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a sink's publisher, a NATS connection or an
// embedded server outlives the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
