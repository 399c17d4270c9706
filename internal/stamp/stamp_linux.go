package stamp

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// oobSize holds the timestamp's control message, with room to spare.
var oobSize = unix.CmsgSpace(16) * 2

// enable sets SO_TIMESTAMPNS on conn.
func enable(conn *net.UDPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("kernel timestamps: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return fmt.Errorf("kernel timestamps: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("kernel timestamps: set SO_TIMESTAMPNS: %w", serr)
	}
	return nil
}

// kernelTime finds the SCM_TIMESTAMPNS control message in oob and returns
// its time as unix ns.
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
