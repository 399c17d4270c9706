package beepclient

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// arrivalConn is a UDP socket on 127.0.0.1 with SO_TIMESTAMPNS whose
// ReadFrom records the kernel's receive time of every RTP datagram. It is
// the packet conn under the client's ICE UDP mux, which reads it from one
// goroutine.
type arrivalConn struct {
	*net.UDPConn
	arr *arrivals

	// mu is held for a whole ReadFrom: it guards oob and the cached
	// address, and lets Close wait for a read in progress.
	mu       sync.Mutex
	oob      []byte
	lastAP   netip.AddrPort
	lastAddr *net.UDPAddr
}

// listenArrivals opens an arrivalConn on 127.0.0.1 with an ephemeral port.
func listenArrivals(arr *arrivals) (*arrivalConn, error) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("arrival times: listen: %w", err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("arrival times: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		conn.Close()
		if err == nil {
			err = serr
		}
		return nil, fmt.Errorf("arrival times: set SO_TIMESTAMPNS: %w", err)
	}
	return &arrivalConn{UDPConn: conn, arr: arr, oob: make([]byte, unix.CmsgSpace(16)*2)}, nil
}

// ReadFrom reads one datagram, recording its kernel arrival time when it
// is RTP. It allocates nothing while datagrams come from one address.
func (c *arrivalConn) ReadFrom(b []byte) (int, net.Addr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, oobn, _, ap, err := c.ReadMsgUDPAddrPort(b, c.oob)
	if err != nil {
		return n, nil, err
	}
	if ns, ok := kernelTime(c.oob[:oobn]); ok {
		c.arr.record(b[:n], ns)
	}
	if c.lastAddr == nil || ap != c.lastAP {
		c.lastAP, c.lastAddr = ap, net.UDPAddrFromAddrPort(ap)
	}
	return n, c.lastAddr, nil
}

// Close closes the socket and waits until a read in progress has returned.
func (c *arrivalConn) Close() error {
	err := c.UDPConn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	return err
}

// kernelTime finds the SCM_TIMESTAMPNS control message in oob and returns
// its time as UnixNano.
func kernelTime(oob []byte) (int64, bool) {
	for len(oob) > 0 {
		h, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_TIMESTAMPNS && len(data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(data[8:16]))
			return sec*1e9 + nsec, true
		}
		oob = rest
	}
	return 0, false
}
