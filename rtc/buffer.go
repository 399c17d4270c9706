package rtc

import (
	"errors"
	"io"
	"sync/atomic"

	"github.com/pion/transport/v2/packetio"
)

// DefaultTrackBuffer bounds the received audio waiting for a track's reader:
// about half a second of typical Opus packets. pion's own default is 1 MB
// (minutes of audio): under overload the router would queue stale audio
// and deliver it seconds late rather than drop it.
const DefaultTrackBuffer = 4 << 10

// DefaultVideoTrackBuffer bounds the received media waiting for a track's
// reader on a peer with video: pion's own default, seconds of video.
const DefaultVideoTrackBuffer = 1 << 20

// srtcpBuffer is pion's own bound for RTCP, kept as is.
const srtcpBuffer = 100 * 1000

// bufferFactory returns pion's per-SSRC receive buffers: RTP ones bounded
// by rtpLimit bytes, counting in dropped what does not fit (pion drops it
// silently), and RTCP ones as pion makes them.
func bufferFactory(rtpLimit int, dropped *atomic.Uint64) func(packetio.BufferPacketType, uint32) io.ReadWriteCloser {
	return func(t packetio.BufferPacketType, _ uint32) io.ReadWriteCloser {
		b := packetio.NewBuffer()
		if t != packetio.RTPBufferPacket {
			b.SetLimitSize(srtcpBuffer)
			return b
		}
		b.SetLimitSize(rtpLimit)
		return countingBuffer{Buffer: b, dropped: dropped}
	}
}

// countingBuffer counts the packets its Buffer refuses for being full.
type countingBuffer struct {
	*packetio.Buffer
	dropped *atomic.Uint64
}

// Write buffers p, counting it when the buffer is full.
func (b countingBuffer) Write(p []byte) (int, error) {
	n, err := b.Buffer.Write(p)
	if errors.Is(err, packetio.ErrFull) {
		b.dropped.Add(1)
	}
	return n, err
}
