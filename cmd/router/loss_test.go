package main

import (
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/beepclient"
)

// lossyRelay forwards UDP between one client and the router on loopback,
// dropping a share of the client's RTP packets (never STUN, DTLS or RTCP).
type lossyRelay struct {
	front  net.PacketConn // the client talks to this
	back   *net.UDPConn   // this talks to the router
	router *net.UDPAddr
	loss   float64
	rng    *rand.Rand

	mu      sync.Mutex
	client  net.Addr
	dropped int
	wg      sync.WaitGroup
}

func newLossyRelay(t *testing.T, routerPort int, loss float64) *lossyRelay {
	t.Helper()
	front, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &lossyRelay{front: front, back: back, router: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: routerPort}, loss: loss, rng: rand.New(rand.NewPCG(1, 2))}
	r.wg.Add(2)
	go r.forward()
	go r.backward()
	t.Cleanup(func() { front.Close(); back.Close(); r.wg.Wait() })
	return r
}

func (r *lossyRelay) port() int { return r.front.LocalAddr().(*net.UDPAddr).Port }

// isRTP tells RTP from RTCP, STUN and DTLS (RFC 7983, RFC 5761).
func isRTP(b []byte) bool {
	return len(b) > 1 && b[0] >= 128 && b[0] <= 191 && (b[1]&0x7f < 64 || b[1]&0x7f > 95)
}

func (r *lossyRelay) forward() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := r.front.ReadFrom(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.client = from
		drop := isRTP(buf[:n]) && r.rng.Float64() < r.loss
		if drop {
			r.dropped++
		}
		r.mu.Unlock()
		if !drop {
			_, _ = r.back.WriteToUDP(buf[:n], r.router)
		}
	}
}

func (r *lossyRelay) backward() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := r.back.ReadFromUDP(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		to := r.client
		r.mu.Unlock()
		if to != nil {
			_, _ = r.front.WriteTo(buf[:n], to)
		}
	}
}

// TestPacketLossRecoveredByNACK sends a publisher's audio through a relay
// that drops 5% of its RTP, with and without NACK, and compares what a
// receiver gets.
func TestPacketLossRecoveredByNACK(t *testing.T) {
	const sent, loss = 250, 0.05
	delivered := map[bool]float64{}
	for _, nack := range []bool{false, true} {
		port := freeUDPPort(t)
		r := startRouter(t, map[string]string{"UDP_PORT": strconv.Itoa(port)})
		relay := newLossyRelay(t, port, loss)
		r.mustJoin("alice", "conv-1")
		r.mustJoin("bob", "conv-1")
		// Alice reaches the router only through the relay.
		alice := r.dial("alice", beepclient.Options{Publish: true, NoNACK: !nack, AnswerFilter: func(sdp string) string {
			return strings.ReplaceAll(sdp, " "+strconv.Itoa(port)+" typ host", " "+strconv.Itoa(relay.port())+" typ host")
		}})
		bob := r.dial("bob", beepclient.Options{Receive: 1})
		if err := pace(alice, 'a', 0, sent, loud); err != nil {
			t.Fatal(err)
		}
		// Wait for the tail, including retransmissions, to settle: the
		// last packet, or its NACKed copy, reaches bob.
		_ = bob.WaitFor(deadline(t, 3*time.Second), func(rx map[string][]beepclient.Packet) bool {
			for _, pkts := range rx {
				for _, p := range pkts {
					if counter(p) == sent-1 {
						return true
					}
				}
			}
			return false
		})
		got := map[int]bool{}
		for _, pkts := range bob.Received() {
			for _, p := range pkts {
				got[counter(p)] = true
			}
		}
		relay.mu.Lock()
		dropped := relay.dropped
		relay.mu.Unlock()
		delivered[nack] = 100 * float64(len(got)) / sent
		t.Logf("nack=%v: relay dropped %d of alice's RTP packets; bob got %d of %d distinct packets (%.1f%%)", nack, dropped, len(got), sent, delivered[nack])
		if dropped == 0 {
			t.Fatal("the relay dropped nothing: the test proves nothing")
		}
		if sent := r.a.rooms.Stats().NACKsSent; nack && sent == 0 {
			t.Fatal("router_rtcp_nacks_sent_total stayed 0 under loss")
		}
	}
	if delivered[true] <= delivered[false] || delivered[true] < 99 {
		t.Fatalf("delivered %.1f%% with NACK, %.1f%% without: NACK did not recover the loss", delivered[true], delivered[false])
	}
}
