package rtc

import (
	"errors"
	"sync/atomic"
)

// ErrSocketLimit refuses a new peer whose ICE sockets would take the
// Engine's sockets past Config.MaxSockets (the router's share of the
// process's file descriptors). The peers already open go on.
var ErrSocketLimit = errors.New("the router is at its ICE socket limit (file descriptors), try again later")

// socketBudget tracks how many sockets one peer's ICE agent opens, to judge
// whether a new peer fits.
type socketBudget struct {
	// perPeer is the most sockets one peer's agent has opened so far (one
	// per local address and network; none with the UDP_PORT mux, STUN
	// servers aside); 0 until a peer has gathered.
	perPeer atomic.Int64
	// refused counts peers refused for MaxSockets.
	refused atomic.Uint64
}

// opened notes that a peer's agent has n sockets open.
func (b *socketBudget) opened(n int) {
	for {
		old := b.perPeer.Load()
		if int64(n) <= old || b.perPeer.CompareAndSwap(old, int64(n)) {
			return
		}
	}
}

// open returns how many sockets of the Engine are open (the UDP_PORT mux's
// included).
func (s *sockets) open() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byAddr)
}

// admitSockets refuses a new peer (ErrSocketLimit) when the sockets it
// would open do not fit in Config.MaxSockets. The projection takes the
// larger of the sockets open and what the peers, connected or still
// gathering, open each (a peer opens its sockets only once it gathers, so
// counting open sockets alone would let a burst of connects through), plus
// one more peer's.
func (e *Engine) admitSockets() error {
	if e.cfg.MaxSockets <= 0 {
		return nil
	}
	per := e.socks.budget.perPeer.Load()
	if per == 0 && e.mux == nil {
		per = 1 // before any peer has gathered
	}
	if per == 0 {
		return nil // the mux carries every peer: no socket per peer
	}
	e.mu.Lock()
	peers := int64(len(e.peers))
	e.mu.Unlock()
	projected := max(int64(e.socks.open()), peers*per) + per
	if projected > int64(e.cfg.MaxSockets) {
		e.socks.budget.refused.Add(1)
		return ErrSocketLimit
	}
	return nil
}
