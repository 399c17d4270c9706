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

// srtcpBuffer bounds the RTCP of one SSRC waiting for its reader. The
// router drains the RTCP of every sender and receiver at once (drainRTCP),
// so this holds a few packets at most; pion's own 100 kB per SSRC let an
// SSRC nobody reads (one a client names at random) hold that much.
const srtcpBuffer = 8 << 10

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

// streamGuard bounds the SRTP and SRTCP read streams pion keeps for one
// peer. pion makes a read stream, with its buffer, for every SSRC a
// client's packets name (an RTCP report block or SDES chunk naming a random
// SSRC is enough) and keeps it until the peer closes: its processors of
// undeclared streams only log them. One subscriber sending receiver reports
// that named random SSRCs grew the heap by 670 MiB in 10 s. pion makes each
// stream's buffer through the BufferFactory, so that is where they are
// counted: past limit, the stream gets a buffer that keeps nothing, and the
// peer is closed (ErrStreamLimit), which ends its SRTP sessions and so the
// making of streams. A client that negotiated n m-lines needs about 2n
// streams (RTP and RTCP of what it sends, RTCP of what it receives), and
// names a few SSRCs of its own in SDES and reports.
type streamGuard struct {
	limit   int32
	n       atomic.Int32
	inner   func(packetio.BufferPacketType, uint32) io.ReadWriteCloser
	tripped atomic.Bool
	// trip is called once, from a pion goroutine holding its session's
	// lock, when a stream past limit is made.
	trip func()
	// in, if set, is the peer's direct ingress path: it gets every SRTP
	// read stream's buffer (ingress.go).
	in *ingress
}

// buffer is the peer's BufferFactory.
func (g *streamGuard) buffer(t packetio.BufferPacketType, ssrc uint32) io.ReadWriteCloser {
	if g.n.Add(1) <= g.limit {
		b := g.inner(t, ssrc)
		if t == packetio.RTPBufferPacket && g.in != nil {
			return g.in.newStream(ssrc, b)
		}
		return b
	}
	if g.tripped.CompareAndSwap(false, true) && g.trip != nil {
		g.trip()
	}
	return nullBuffer{}
}

// nullBuffer is the buffer of a stream past the bound: it keeps nothing, and
// a reader gets io.EOF.
type nullBuffer struct{}

func (nullBuffer) Read([]byte) (int, error)    { return 0, io.EOF }
func (nullBuffer) Write(p []byte) (int, error) { return len(p), nil }
func (nullBuffer) Close() error                { return nil }

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
