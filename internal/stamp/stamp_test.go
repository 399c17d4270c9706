package stamp

import (
	"encoding/binary"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// header returns a 12-byte RTP header followed by a few payload bytes.
func header(pt byte, seq uint16, ssrc uint32) []byte {
	b := make([]byte, 20)
	b[0] = 0x80
	b[1] = pt
	binary.BigEndian.PutUint16(b[2:4], seq)
	binary.BigEndian.PutUint32(b[8:12], ssrc)
	return b
}

func TestRTP(t *testing.T) {
	stun := make([]byte, 20) // binding request: type 0x0001
	stun[1] = 1
	dtls := make([]byte, 20)
	dtls[0] = 22 // handshake
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"opus", header(111, 1, 1), true},
		{"opus with marker", header(0x80|111, 1, 1), true},
		{"payload type 0", header(0, 1, 1), true},
		{"sender report", header(200, 1, 1), false},
		{"receiver report", header(201, 1, 1), false},
		{"feedback", header(205, 1, 1), false},
		{"stun", stun, false},
		{"dtls", dtls, false},
		{"short", header(111, 1, 1)[:11], false},
	} {
		ssrc, seq, ok := RTP(tc.b)
		if ok != tc.want {
			t.Errorf("%s: RTP = %v, want %v", tc.name, ok, tc.want)
		}
		if ok && (ssrc != 1 || seq != 1) {
			t.Errorf("%s: ssrc %d seq %d, want 1 and 1", tc.name, ssrc, seq)
		}
	}
}

func TestTable(t *testing.T) {
	var tb Table
	// RTCP (all a subscriber's socket receives, with STUN and DTLS) costs
	// the table nothing: its entries are made on the first RTP datagram.
	tb.Record(header(201, 1, 1), 500)
	if tb.e.Load() != nil {
		t.Error("the table's entries were made for RTCP")
	}
	tb.Record(header(111, 5, 9), 1000)
	if at, ok := tb.Lookup(9, 5); !ok || at != 1000 {
		t.Errorf("Lookup(9, 5) = %d %v, want 1000", at, ok)
	}
	if _, ok := tb.Lookup(9, 6); ok {
		t.Error("a packet not seen was found")
	}
	if _, ok := tb.Lookup(10, 5); ok {
		t.Error("an SSRC not seen was found")
	}
	tb.Record(header(200, 7, 11), 3000)
	if _, ok := tb.Lookup(11, 7); ok {
		t.Error("RTCP was recorded")
	}
	// Filling the table overwrites old entries; they are not found.
	for i := 0; i < 2*tableSize; i++ {
		tb.Record(header(111, uint16(i), 77), int64(5000+i))
	}
	if _, ok := tb.Lookup(9, 5); ok {
		t.Error("an overwritten entry was found")
	}
	if at, ok := tb.Lookup(77, 2*tableSize-1); !ok || at != int64(5000+2*tableSize-1) {
		t.Errorf("latest entry: %d %v", at, ok)
	}
}

// TestConn sends datagrams to a timestamping socket: RTP ones get a kernel
// time between their send and their read, others none; reading allocates
// nothing; Close ends a read in progress.
func TestConn(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("kernel timestamps are implemented for Linux only")
	}
	var tb Table
	raw, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Wrap(raw, &tb)
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
		before := time.Now().UnixNano()
		if _, err := src.Write(header(pt, seq, ssrc)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, addr, err := c.ReadFrom(buf)
		after := time.Now().UnixNano()
		if err != nil || n != 20 {
			t.Fatalf("read: %d bytes, %v", n, err)
		}
		if addr.String() != src.LocalAddr().String() {
			t.Errorf("from %v, want %v", addr, src.LocalAddr())
		}
		at, ok := tb.Lookup(ssrc, seq)
		if pt == 200 {
			if ok {
				t.Errorf("RTCP got an arrival time %d", at)
			}
			continue
		}
		if !ok || at < before || at > after {
			t.Errorf("payload type %d: arrival %d (%v) not within [%d, %d]", pt, at, ok, before, after)
		}
	}

	const runs = 50
	for i := 0; i < runs+1; i++ {
		if _, err := src.Write(header(111, uint16(1000+i), 7)); err != nil {
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

	// Close ends a read, whether it has started or not.
	_ = c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.ReadFrom(buf)
		done <- err
	}()
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
