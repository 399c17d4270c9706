package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testutil"
)

// TestPacketLossRecoveredByNACK sends a publisher's audio through a relay
// that drops 5% of its RTP, with and without NACK, and compares what a
// receiver gets. The router reads the audio on its direct ingress path;
// the retransmissions pass its replay window.
func TestPacketLossRecoveredByNACK(t *testing.T) {
	const sent, loss = 250, 0.05
	delivered := map[bool]float64{}
	for _, nack := range []bool{false, true} {
		port := testutil.FreeUDPPort(t)
		r := startRouter(t, map[string]string{"UDP_PORT": strconv.Itoa(port)})
		relay := testutil.NewRelay(t, port, testutil.RelayOptions{Loss: loss})
		r.mustJoin("alice", "conv-1")
		r.mustJoin("bob", "conv-1")
		// Alice reaches the router only through the relay.
		alice := r.dial("alice", beepclient.Options{Publish: true, NoNACK: !nack, AnswerFilter: func(sdp string) string {
			return strings.ReplaceAll(sdp, " "+strconv.Itoa(port)+" typ host", " "+strconv.Itoa(relay.Port())+" typ host")
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
		dropped, _ := relay.Counts()
		delivered[nack] = 100 * float64(len(got)) / sent
		t.Logf("nack=%v: relay dropped %d of alice's RTP packets; bob got %d of %d distinct packets (%.1f%%)", nack, dropped, len(got), sent, delivered[nack])
		if dropped == 0 {
			t.Fatal("the relay dropped nothing: the test proves nothing")
		}
		st := r.a.rooms.Stats()
		if nack && st.NACKsSent == 0 {
			t.Fatal("router_rtcp_nacks_sent_total stayed 0 under loss")
		}
		// The NACKs are pion's generator's, reading what the direct
		// ingress path took at the socket (INGRESS=direct, the default).
		if st.IngressDirect == 0 {
			t.Fatal("alice's packets did not take the direct ingress path")
		}
	}
	if delivered[true] <= delivered[false] || delivered[true] < 99 {
		t.Fatalf("delivered %.1f%% with NACK, %.1f%% without: NACK did not recover the loss", delivered[true], delivered[false])
	}
}
