package testutil

import (
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// Relay forwards UDP between one client and a router on loopback, dropping
// a share of one direction's RTP (never STUN, DTLS or RTCP): a lossy link
// for testing recovery by NACK. Steer the client through it by naming the
// relay's port instead of the router's in the router's candidate.
type Relay struct {
	front  net.PacketConn // the client talks to this
	back   *net.UDPConn   // this talks to the router
	router *net.UDPAddr
	opts   RelayOptions
	rng    *rand.Rand

	mu              sync.Mutex
	client          net.Addr
	dropped, passed int
	lost            []uint16 // sequence numbers of the dropped packets
	wg              sync.WaitGroup
}

// RelayOptions say which packets a Relay drops.
type RelayOptions struct {
	// Loss is the share of the chosen RTP packets dropped, at random (with
	// a fixed seed: runs drop alike).
	Loss float64
	// Downlink drops the router's packets to the client; by default the
	// client's to the router are dropped.
	Downlink bool
	// PayloadTypes, if not empty, limits the drops to RTP of these payload
	// types.
	PayloadTypes []uint8
	// Jitter delays each chosen RTP packet that is not dropped by a
	// random time up to Jitter, so that packets also arrive late and out
	// of order.
	Jitter time.Duration
}

// NewRelay starts a relay to the router's UDP port on 127.0.0.1; it stops
// with the test.
func NewRelay(t testing.TB, routerPort int, o RelayOptions) *Relay {
	t.Helper()
	front, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		front.Close()
		t.Fatal(err)
	}
	r := &Relay{front: front, back: back, router: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: routerPort}, opts: o, rng: rand.New(rand.NewPCG(1, 2))}
	r.wg.Add(2)
	go r.forward()
	go r.backward()
	t.Cleanup(func() { front.Close(); back.Close(); r.wg.Wait() })
	return r
}

// Port is the relay's port for the client.
func (r *Relay) Port() int { return r.front.LocalAddr().(*net.UDPAddr).Port }

// Counts returns how many of the chosen RTP packets were dropped and passed.
func (r *Relay) Counts() (dropped, passed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dropped, r.passed
}

// Dropped returns the sequence numbers of the packets dropped so far (SRTP
// leaves the RTP header in the clear).
func (r *Relay) Dropped() []uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lost)
}

// IsRTP tells RTP from RTCP, STUN and DTLS (RFC 7983, RFC 5761).
func IsRTP(b []byte) bool {
	return len(b) > 1 && b[0] >= 128 && b[0] <= 191 && (b[1]&0x7f < 64 || b[1]&0x7f > 95)
}

// drop decides, under r.mu, whether b goes, and how late.
func (r *Relay) drop(b []byte) (drop bool, delay time.Duration) {
	if !IsRTP(b) || len(r.opts.PayloadTypes) > 0 && !slices.Contains(r.opts.PayloadTypes, b[1]&0x7f) {
		return false, 0
	}
	if r.rng.Float64() >= r.opts.Loss {
		r.passed++
		if r.opts.Jitter > 0 {
			delay = time.Duration(r.rng.Int64N(int64(r.opts.Jitter)))
		}
		return false, delay
	}
	r.dropped++
	r.lost = append(r.lost, uint16(b[2])<<8|uint16(b[3]))
	return true, 0
}

// send writes b to addr through conn, after delay (b is copied then).
func (r *Relay) send(conn net.PacketConn, b []byte, addr net.Addr, delay time.Duration) {
	if delay <= 0 {
		_, _ = conn.WriteTo(b, addr)
		return
	}
	late := append([]byte(nil), b...)
	r.wg.Add(1)
	time.AfterFunc(delay, func() {
		defer r.wg.Done()
		_, _ = conn.WriteTo(late, addr)
	})
}

// forward carries the client's packets to the router.
func (r *Relay) forward() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := r.front.ReadFrom(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.client = from
		drop, delay := false, time.Duration(0)
		if !r.opts.Downlink {
			drop, delay = r.drop(buf[:n])
		}
		r.mu.Unlock()
		if !drop {
			r.send(r.back, buf[:n], r.router, delay)
		}
	}
}

// backward carries the router's packets to the client.
func (r *Relay) backward() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := r.back.ReadFromUDP(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		to := r.client
		drop, delay := false, time.Duration(0)
		if r.opts.Downlink {
			drop, delay = r.drop(buf[:n])
		}
		r.mu.Unlock()
		if to != nil && !drop {
			r.send(r.front, buf[:n], to, delay)
		}
	}
}
