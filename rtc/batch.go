package rtc

import (
	"errors"
	"fmt"
	"net"

	"github.com/pion/rtp"
	"golang.org/x/net/ipv4"
)

// SendBuffer is where a goroutine that writes to down-tracks builds and encrypts
// the copies it sends directly, and queues them to send them with as few
// system calls as it can. Each goroutine that calls DownTrack.Write has its own:
// a track's packet path uses the track's (UpTrack.SendBuffer), a forwarder's
// fan-out worker its own. One buffer serves a whole fan-out and stays in
// cache.
//
// On the UDP_PORT mux every peer shares one socket, so the copies of one
// packet for all its receivers leave with one sendmmsg (through x/net's
// WriteBatch). With a socket per peer there is nothing to batch: each copy
// is sent at once with sendto, from the same buffer.
type SendBuffer struct {
	arena []byte
	used  int
	msgs  []ipv4.Message
	bufs  [][1][]byte
	to    batchWriter // the socket of msgs
	// calls counts the sendmmsg system calls made (for tests).
	calls uint64

	// What sends refused since the last SendBuffer.Flush.
	failed int
	err    error
}

// batchWriter sends several datagrams with one system call.
type batchWriter interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// Sizes of a SendBuffer: room for the copies of one audio packet (up to
// about 200 bytes) for 128 receivers, then it is sent and reused. Made on
// the first direct write: only a goroutine that forwards has one.
const (
	batchArena = 32 << 10
	batchMsgs  = 128
)

// buffer returns room for one outgoing packet, sending what is queued first
// if the batch is full or goes to another socket.
func (b *SendBuffer) buffer(to batchWriter) []byte {
	if b.arena == nil {
		b.arena = make([]byte, batchArena)
		b.msgs = make([]ipv4.Message, 0, batchMsgs)
		b.bufs = make([][1][]byte, batchMsgs)
	}
	if len(b.msgs) > 0 && (to != b.to || len(b.msgs) == batchMsgs || len(b.arena)-b.used < maxPacket+srtpOverhead) {
		b.flush()
	}
	b.to = to
	return b.arena[b.used : b.used+maxPacket+srtpOverhead]
}

// queue adds pkt, which must lie at the start of the last buffer returned,
// for addr.
func (b *SendBuffer) queue(pkt []byte, addr *net.UDPAddr) {
	i := len(b.msgs)
	b.bufs[i][0] = pkt
	b.msgs = append(b.msgs, ipv4.Message{Buffers: b.bufs[i][:], Addr: addr})
	b.used += len(pkt)
}

// flush sends what is queued. A datagram the kernel refuses is skipped and
// counted, and the rest still go.
func (b *SendBuffer) flush() {
	for i := 0; i < len(b.msgs); {
		n, err := b.to.WriteBatch(b.msgs[i:], 0)
		b.calls++
		if n > 0 { // x/net reports -1 with an error
			i += n
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				break // the shared socket closes with the router
			}
			if b.err == nil {
				b.err = fmt.Errorf("sendmmsg to %v: %w", b.msgs[i].Addr, err)
			}
			b.failed++
			i++ // the datagram that failed
		}
	}
	for i := range b.msgs {
		b.msgs[i] = ipv4.Message{}
		b.bufs[i][0] = nil
	}
	b.msgs = b.msgs[:0]
	b.used = 0
}

// Flush sends what the down-tracks' writes have queued. Call it once a packet
// has been written to every down-track. It reports how many datagrams the kernel
// refused since the last Flush, and the first error.
func (b *SendBuffer) Flush() (failed int, err error) {
	if len(b.msgs) > 0 {
		b.flush()
	}
	failed, err = b.failed, b.err
	b.failed, b.err = 0, nil
	return failed, err
}

// Fanout writes packet p of src to downs through buf (see DownTrack.Write)
// and sends what buf queued: the inner loop of a forwarder. It reports how
// many copies were written and how many failed, with the first error. A
// down-track whose write panics costs its own peer, which is closed
// (Peer.Fail), not the others: they still get the packet.
func Fanout(downs []*DownTrack, buf *SendBuffer, src *UpTrack, p *rtp.Packet, levelByte byte, hasLevel bool, now int64) (written, failed uint64, err error) {
	for i := 0; i < len(downs); {
		i = fanoutFrom(downs, i, buf, src, p, levelByte, hasLevel, now, &written, &failed, &err)
	}
	n, ferr := buf.Flush()
	if ferr != nil {
		failed += uint64(n)
		if err == nil {
			err = ferr
		}
	}
	return written, failed, err
}

// fanoutFrom writes to downs from index i on, and returns where it
// stopped: at the end, or just past a down-track whose write panicked. One
// deferred recover serves the whole loop, so the packet path pays for it
// once per fan-out, not once per copy.
func fanoutFrom(downs []*DownTrack, i int, buf *SendBuffer, src *UpTrack, p *rtp.Packet, levelByte byte, hasLevel bool, now int64, written, failed *uint64, err *error) (next int) {
	defer func() {
		if r := recover(); r != nil {
			if peer := downs[next].peer; peer != nil {
				peer.Fail("fan-out", r)
			}
			*failed++
			next++
		}
	}()
	for next = i; next < len(downs); next++ {
		ok, werr := downs[next].Write(buf, src, p, levelByte, hasLevel, now)
		switch {
		case werr != nil:
			*failed++
			if *err == nil {
				*err = werr
			}
		case ok:
			*written++
		}
	}
	return next
}
