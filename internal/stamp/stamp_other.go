//go:build !linux

package stamp

import (
	"errors"
	"net"
)

const oobSize = 0

// enable fails: kernel receive timestamps are implemented for Linux.
func enable(*net.UDPConn) error {
	return errors.New("kernel timestamps: implemented for Linux only")
}

func kernelTime([]byte) (int64, bool) { return 0, false }
