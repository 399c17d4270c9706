package rtc

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/pion/transport/v2/packetio"
)

func TestTrackBufferIsBoundedAndCounts(t *testing.T) {
	var dropped atomic.Uint64
	f := bufferFactory(1000, &dropped)
	rtp := f(packetio.RTPBufferPacket, 1)
	pkt := make([]byte, 98) // 100 bytes with the buffer's length prefix
	written := 0
	for range 15 {
		if _, err := rtp.Write(pkt); err == nil {
			written++
		} else if !errors.Is(err, packetio.ErrFull) {
			t.Fatal(err)
		}
	}
	if written != 10 || dropped.Load() != 5 {
		t.Fatalf("wrote %d, dropped %d; want 10 and 5", written, dropped.Load())
	}
	// Reading makes room again.
	buf := make([]byte, 1500)
	if _, err := rtp.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := rtp.Write(pkt); err != nil {
		t.Fatalf("no room after a read: %v", err)
	}
	// RTCP keeps pion's bound and is not counted.
	rtcp := f(packetio.RTCPBufferPacket, 1)
	for range 20 {
		if _, err := rtcp.Write(pkt); err != nil {
			t.Fatal(err)
		}
	}
	if dropped.Load() != 5 {
		t.Fatal("RTCP counted as RTP drops")
	}
	_ = rtp.Close()
	_ = rtcp.Close()
}
