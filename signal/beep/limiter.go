package beep

import (
	"errors"
	"net"
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

// pending bounds the /connect sockets that have not yet sent their offer,
// per client address and in total.
type pending struct {
	perAddr, total int // <= 0: no bound

	mu     sync.Mutex
	n      int
	byAddr map[string]int
}

func newPending(perAddr, total int) *pending {
	return &pending{perAddr: perAddr, total: total, byAddr: make(map[string]int)}
}

// Reasons acquire refuses a place.
var (
	errPendingTotal   = errors.New("too many connections waiting for their offer: try again later")
	errPendingPerAddr = errors.New("too many connections waiting for their offer from this address: slow down")
)

// acquire takes a place for addr. On success the returned release gives it
// back; it may be called more than once.
func (p *pending) acquire(addr string) (release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.total > 0 && p.n >= p.total {
		return nil, errPendingTotal
	}
	if p.perAddr > 0 && p.byAddr[addr] >= p.perAddr {
		return nil, errPendingPerAddr
	}
	p.n++
	p.byAddr[addr]++
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			p.n--
			if p.byAddr[addr]--; p.byAddr[addr] <= 0 {
				delete(p.byAddr, addr)
			}
			p.mu.Unlock()
		})
	}, nil
}

// count returns the places taken.
func (p *pending) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// clientAddr is the IP of the request's peer (r.RemoteAddr without the
// port). Behind a reverse proxy it is the proxy's address.
func clientAddr(remote string) string {
	if host, _, err := net.SplitHostPort(remote); err == nil {
		return host
	}
	return remote
}
