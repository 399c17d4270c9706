// Package stamp records when RTP datagrams reached a UDP socket, as the
// kernel saw it (SO_TIMESTAMPNS), and finds the time again once the packet
// has been decrypted and read. The router uses it to count a packet's
// latency from its arrival at the host, before any queue of its own; the
// load tool's clients use it to time packets at their socket.
//
// SRTP leaves the RTP header in clear, so a datagram is recorded under its
// SSRC and sequence number as it is read, and looked up by them later.
package stamp

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Table maps (SSRC, sequence number) to arrival times in fixed memory. One
// goroutine (a socket's reader) records and any number look up, without
// locks; an entry overwritten in between is not found.
type Table struct {
	// e is made on the first RTP datagram: a socket that never receives
	// RTP (a subscriber's, which gets only RTCP, STUN and DTLS) costs
	// nothing, not 64 KiB.
	e atomic.Pointer[[tableSize]entry]
}

// tableSize is a power of two: 2.6 s of 50 packet/s audio for 32 streams
// sharing a socket.
const tableSize = 4096

type entry struct {
	key atomic.Uint64 // 1<<63 | ssrc<<16 | seq; 0 while being written
	at  atomic.Int64  // unix ns
}

func slot(ssrc uint32, seq uint16) (key uint64, i int) {
	return 1<<63 | uint64(ssrc)<<16 | uint64(seq), int((ssrc*0x9e3779b1 + uint32(seq)) & (tableSize - 1))
}

// Record notes that datagram b arrived at at (unix ns), if it is RTP.
func (t *Table) Record(b []byte, at int64) {
	ssrc, seq, ok := RTP(b)
	if !ok || at == 0 {
		return
	}
	k, i := slot(ssrc, seq)
	es := t.e.Load()
	if es == nil {
		es = new([tableSize]entry)
		if !t.e.CompareAndSwap(nil, es) {
			es = t.e.Load()
		}
	}
	e := &es[i]
	e.key.Store(0)
	e.at.Store(at)
	e.key.Store(k)
}

// Lookup returns when the datagram of ssrc and seq arrived (unix ns), if
// it is known.
func (t *Table) Lookup(ssrc uint32, seq uint16) (int64, bool) {
	k, i := slot(ssrc, seq)
	es := t.e.Load()
	if es == nil {
		return 0, false
	}
	e := &es[i]
	if e.key.Load() != k {
		return 0, false
	}
	at := e.at.Load()
	if e.key.Load() != k {
		return 0, false
	}
	return at, true
}

// RTP returns the SSRC and sequence number of an RTP (SRTP) datagram, or
// false for STUN, DTLS, RTCP and anything else: RFC 7983 puts RTP and RTCP
// at first bytes 128–191 (version 2), and RFC 5761 tells RTCP by a payload
// type, marker bit masked, of 64–95.
func RTP(b []byte) (ssrc uint32, seq uint16, ok bool) {
	if len(b) < 12 || b[0]>>6 != 2 {
		return 0, 0, false
	}
	if pt := b[1] & 0x7f; pt >= 64 && pt <= 95 {
		return 0, 0, false
	}
	return uint32(b[8])<<24 | uint32(b[9])<<16 | uint32(b[10])<<8 | uint32(b[11]), uint16(b[2])<<8 | uint16(b[3]), true
}

// Conn is a UDP socket whose ReadFrom records the kernel's arrival time of
// every RTP datagram in a Table.
type Conn struct {
	*net.UDPConn
	table *Table

	// mu is held for a whole ReadFrom: it guards oob and the cached
	// address, and lets Close wait for a read in progress.
	mu   sync.Mutex
	oob  []byte
	last AddrCache
}

// Wrap turns on kernel receive timestamps for conn and returns it as a
// Conn that records into t. It fails where the system has no
// SO_TIMESTAMPNS.
func Wrap(conn *net.UDPConn, t *Table) (*Conn, error) {
	if err := enable(conn); err != nil {
		return nil, err
	}
	return &Conn{UDPConn: conn, table: t, oob: make([]byte, oobSize)}, nil
}

// Table is where c records.
func (c *Conn) Table() *Table { return c.table }

// ReadFrom reads one datagram, recording its arrival when it is RTP. It
// allocates nothing while datagrams come from one address: the address it
// returns is shared by them and never changed.
func (c *Conn) ReadFrom(b []byte) (int, net.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ap, err := c.readAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, c.last.Addr(ap), nil
}

// AddrCache turns the sender of a datagram into the net.Addr a
// net.PacketConn's ReadFrom returns, allocating only when the sender
// changes: the address it returns is shared by the datagrams of one sender
// and never changed. One reader at a time uses it.
type AddrCache struct {
	ap   netip.AddrPort
	addr *net.UDPAddr
}

// Addr returns ap as a *net.UDPAddr.
func (c *AddrCache) Addr(ap netip.AddrPort) *net.UDPAddr {
	if c.addr == nil || ap != c.ap {
		c.ap, c.addr = ap, net.UDPAddrFromAddrPort(ap)
	}
	return c.addr
}

// ReadFromAddrPort is ReadFrom with the sender's address as a value: it
// allocates nothing, whoever sent the datagram.
func (c *Conn) ReadFromAddrPort(b []byte) (int, netip.AddrPort, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readAddrPort(b)
}

func (c *Conn) readAddrPort(b []byte) (int, netip.AddrPort, error) {
	n, oobn, _, ap, err := c.ReadMsgUDPAddrPort(b, c.oob)
	if err != nil {
		return n, ap, err
	}
	if at, ok := kernelTime(c.oob[:oobn]); ok {
		c.table.Record(b[:n], at)
	}
	return n, ap, nil
}

// Close closes the socket and waits until a read in progress has returned.
func (c *Conn) Close() error {
	err := c.UDPConn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return err
}
