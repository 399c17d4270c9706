package beepclient

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rtpHeader returns a 12-byte RTP header followed by a few payload bytes.
func rtpHeader(pt byte, seq uint16, ssrc uint32) []byte {
	b := make([]byte, 20)
	b[0] = 0x80
	b[1] = pt
	binary.BigEndian.PutUint16(b[2:4], seq)
	binary.BigEndian.PutUint32(b[8:12], ssrc)
	return b
}

func TestIsRTP(t *testing.T) {
	stun := make([]byte, 20) // binding request: type 0x0001
	stun[1] = 1
	dtls := make([]byte, 20)
	dtls[0] = 22 // handshake
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"opus", rtpHeader(111, 1, 1), true},
		{"opus with marker", rtpHeader(0x80|111, 1, 1), true},
		{"payload type 0", rtpHeader(0, 1, 1), true},
		{"sender report", rtpHeader(200, 1, 1), false},
		{"receiver report", rtpHeader(201, 1, 1), false},
		{"feedback", rtpHeader(205, 1, 1), false},
		{"stun", stun, false},
		{"dtls", dtls, false},
		{"short", rtpHeader(111, 1, 1)[:11], false},
	} {
		if got := isRTP(tc.b); got != tc.want {
			t.Errorf("%s: isRTP = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestArrivalsRing(t *testing.T) {
	a := &arrivals{}
	a.record(rtpHeader(111, 5, 9), 1000)
	if got := a.lookup(9, 5); got.UnixNano() != 1000 {
		t.Errorf("lookup(9, 5) = %v, want 1000 ns", got)
	}
	if got := a.lookup(9, 6); !got.IsZero() {
		t.Errorf("lookup of a packet not seen = %v", got)
	}
	if got := a.lookup(10, 5); !got.IsZero() {
		t.Errorf("lookup of an SSRC not seen = %v", got)
	}
	a.record(rtpHeader(111, 5+arrivalRingSize, 9), 2000)
	if got := a.lookup(9, 5); !got.IsZero() {
		t.Errorf("overwritten entry: lookup = %v, want zero", got)
	}
	if got := a.lookup(9, 5+arrivalRingSize); got.UnixNano() != 2000 {
		t.Errorf("lookup after wrap = %v, want 2000 ns", got)
	}
	a.record(rtpHeader(200, 5, 11), 3000)
	if a.ring(11, false) != nil {
		t.Error("RTCP was recorded")
	}
	for i := uint32(0); i < 2*maxArrivalSSRCs; i++ {
		a.record(rtpHeader(111, 1, 100+i), 4000)
	}
	if n := len(*a.rings.Load()); n != maxArrivalSSRCs {
		t.Errorf("%d SSRCs recorded, want at most %d", n, maxArrivalSSRCs)
	}
}

// TestArrivalConn sends datagrams to the timestamping socket: RTP ones get
// a kernel time between their send and their read, others none; reading
// allocates nothing; Close ends a read in progress.
func TestArrivalConn(t *testing.T) {
	a := &arrivals{}
	c, err := listenArrivals(a)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	src, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	buf := make([]byte, 1500)
	for i, pt := range []byte{111, 0x80 | 111, 200} {
		seq, ssrc := uint16(100+i), uint32(7+i)
		before := time.Now()
		if _, err := src.Write(rtpHeader(pt, seq, ssrc)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, addr, err := c.ReadFrom(buf)
		after := time.Now()
		if err != nil || n != 20 {
			t.Fatalf("read: %d bytes, %v", n, err)
		}
		if addr.String() != src.LocalAddr().String() {
			t.Errorf("from %v, want %v", addr, src.LocalAddr())
		}
		got := a.lookup(ssrc, seq)
		if pt == 200 {
			if !got.IsZero() {
				t.Errorf("RTCP got an arrival time %v", got)
			}
			continue
		}
		if got.Before(before) || got.After(after) {
			t.Errorf("payload type %d: arrival %v not within [%v, %v]", pt, got, before, after)
		}
	}

	const runs = 50
	for i := 0; i < runs+1; i++ {
		if _, err := src.Write(rtpHeader(111, uint16(1000+i), 7)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	allocs := testing.AllocsPerRun(runs, func() {
		if _, _, err := c.ReadFrom(buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("ReadFrom allocates %.1f times per datagram, want 0", allocs)
	}

	_ = c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(buf)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("read after close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("a read in progress did not end on Close")
	}
}
