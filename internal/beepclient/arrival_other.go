//go:build !linux

package beepclient

import (
	"errors"
	"net"
)

// arrivalConn is only implemented on Linux (SO_TIMESTAMPNS).
type arrivalConn struct{ net.PacketConn }

// listenArrivals fails: kernel arrival times need Linux.
func listenArrivals(*arrivals) (*arrivalConn, error) {
	return nil, errors.New("arrival times: kernel receive timestamps need Linux")
}
