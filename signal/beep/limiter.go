package beep

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiter is a token bucket per user. Idle users' buckets are swept, so
// that the map stays as small as the set of recently active users.
type limiter struct {
	rate  rate.Limit
	burst int

	mu        sync.Mutex
	users     map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	l    *rate.Limiter
	seen time.Time
}

// idle is how long a bucket is kept unused; by then it is full again for
// any rate above one token a minute.
const idle = time.Minute

func newLimiter(r rate.Limit, burst int) *limiter {
	return &limiter{rate: r, burst: burst, users: make(map[string]*bucket)}
}

// allow reports whether user may act at now. A zero rate allows everything.
func (l *limiter) allow(user string, now time.Time) bool {
	if l.rate <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) > idle {
		for u, b := range l.users {
			if now.Sub(b.seen) > idle {
				delete(l.users, u)
			}
		}
		l.lastSweep = now
	}
	b, ok := l.users[user]
	if !ok {
		b = &bucket{l: rate.NewLimiter(l.rate, l.burst)}
		l.users[user] = b
	}
	b.seen = now
	return b.l.AllowN(now, 1)
}
