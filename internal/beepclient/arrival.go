package beepclient

import (
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"
)

// Kernel arrival times (Options.ArrivalTimes): the client's ICE reads one
// UDP socket of its own, which timestamps every datagram in the kernel
// (SO_TIMESTAMPNS). The read wrapper records the time of each RTP datagram
// under its SSRC and sequence number, which SRTP leaves in clear, and the
// track readers look it up once pion has decrypted the packet.

const (
	// arrivalRingSize is how many packets of one SSRC keep their arrival
	// time (a power of two): 1024 packets are 20 s of 20 ms audio.
	arrivalRingSize = 1024
	// maxArrivalSSRCs bounds the SSRCs recorded: a client receives on at
	// most a few dozen m-lines. Later SSRCs get no arrival times.
	maxArrivalSSRCs = 64
)

// arrivalRing holds the arrival times of one SSRC's latest packets,
// indexed by sequence number modulo arrivalRingSize.
type arrivalRing struct {
	mu sync.Mutex
	e  [arrivalRingSize]struct {
		seq uint16
		ns  int64 // UnixNano; 0: empty
	}
}

type ssrcRing struct {
	ssrc uint32
	ring *arrivalRing
}

// arrivals maps (SSRC, sequence number) to kernel arrival times in bounded
// memory: one ring per SSRC, found in a copy-on-write table, so that
// recording and looking up allocate nothing once an SSRC is known.
type arrivals struct {
	rings atomic.Pointer[[]ssrcRing]
	addMu sync.Mutex // serialises additions to rings
}

// isRTP reports whether a datagram is RTP (SRTP) rather than STUN, DTLS or
// RTCP: RFC 7983 puts RTP and RTCP at first bytes 128–191 (version 2), and
// RFC 5761 tells RTCP by a payload type, marker bit masked, of 64–95.
func isRTP(b []byte) bool {
	if len(b) < 12 || b[0]>>6 != 2 {
		return false
	}
	pt := b[1] & 0x7f
	return pt < 64 || pt > 95
}

// ring returns the ring of ssrc, adding one when create is set and the
// table has room; nil otherwise.
func (a *arrivals) ring(ssrc uint32, create bool) *arrivalRing {
	if t := a.rings.Load(); t != nil {
		for _, r := range *t {
			if r.ssrc == ssrc {
				return r.ring
			}
		}
	}
	if !create {
		return nil
	}
	a.addMu.Lock()
	defer a.addMu.Unlock()
	var cur []ssrcRing
	if t := a.rings.Load(); t != nil {
		cur = *t
	}
	for _, r := range cur {
		if r.ssrc == ssrc {
			return r.ring
		}
	}
	if len(cur) >= maxArrivalSSRCs {
		return nil
	}
	next := make([]ssrcRing, len(cur), len(cur)+1)
	copy(next, cur)
	next = append(next, ssrcRing{ssrc: ssrc, ring: &arrivalRing{}})
	a.rings.Store(&next)
	return next[len(next)-1].ring
}

// record notes that datagram b arrived at ns (UnixNano) when it is RTP.
// A later datagram with the same SSRC and sequence number (a
// retransmission, or the number coming round again) replaces the entry.
func (a *arrivals) record(b []byte, ns int64) {
	if !isRTP(b) || ns == 0 {
		return
	}
	seq := binary.BigEndian.Uint16(b[2:4])
	r := a.ring(binary.BigEndian.Uint32(b[8:12]), true)
	if r == nil {
		return
	}
	r.mu.Lock()
	e := &r.e[seq&(arrivalRingSize-1)]
	e.seq, e.ns = seq, ns
	r.mu.Unlock()
}

// lookup returns when the packet ssrc/seq arrived, or the zero time when
// it was not recorded or its entry has been overwritten since.
func (a *arrivals) lookup(ssrc uint32, seq uint16) time.Time {
	r := a.ring(ssrc, false)
	if r == nil {
		return time.Time{}
	}
	r.mu.Lock()
	e := r.e[seq&(arrivalRingSize-1)]
	r.mu.Unlock()
	if e.ns == 0 || e.seq != seq {
		return time.Time{}
	}
	return time.Unix(0, e.ns)
}
