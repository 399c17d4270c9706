// Package throttle limits how often a recurring condition is logged, so that
// a fault seen on every packet is logged once, then summarised.
package throttle

import (
	"sync/atomic"
	"time"
)

// Gate lets an event through at most once per Every. The zero Gate with
// Every zero lets through once per minute.
type Gate struct {
	// Every is the minimum interval between events let through.
	Every time.Duration

	last       atomic.Int64
	suppressed atomic.Uint64
}

// Allow reports whether the event at now may be logged, and how many were
// held back since the last one that was.
func (g *Gate) Allow(now time.Time) (ok bool, suppressed uint64) {
	every := g.Every
	if every <= 0 {
		every = time.Minute
	}
	n := now.UnixNano()
	last := g.last.Load()
	if last != 0 && n-last < int64(every) || !g.last.CompareAndSwap(last, n) {
		g.suppressed.Add(1)
		return false, 0
	}
	return true, g.suppressed.Swap(0)
}
