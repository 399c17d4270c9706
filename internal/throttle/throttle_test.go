package throttle

import (
	"testing"
	"time"
)

func TestGate(t *testing.T) {
	g := Gate{Every: time.Second}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at         time.Duration
		ok         bool
		suppressed uint64
	}{
		{0, true, 0},
		{10 * time.Millisecond, false, 0},
		{500 * time.Millisecond, false, 0},
		{time.Second, true, 2},
		{1500 * time.Millisecond, false, 0},
		{3 * time.Second, true, 1},
	}
	for i, s := range steps {
		ok, sup := g.Allow(t0.Add(s.at))
		if ok != s.ok || sup != s.suppressed {
			t.Fatalf("step %d at %v: got (%v, %d), want (%v, %d)", i, s.at, ok, sup, s.ok, s.suppressed)
		}
	}
}
