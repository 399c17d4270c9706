package oggopus

import (
	"errors"
	"fmt"
)

// SampleRate is the rate of Ogg Opus granule positions and of Opus RTP
// timestamps: always 48 kHz, whatever the coded bandwidth.
const SampleRate = 48000

// maxPacketSamples is the longest duration of an Opus packet, 120 ms
// (RFC 6716 section 3.2.5).
const maxPacketSamples = 120 * SampleRate / 1000

// SilentFrame is a 20 ms Opus packet (CELT, fullband, mono, one frame) that
// decodes to silence. WriteRTP uses it to fill gaps. Do not modify it.
var SilentFrame = []byte{0xf8, 0xff, 0xfe}

// silentSamples is the duration of SilentFrame in 48 kHz samples.
const silentSamples = 960

// ErrInvalidPacket is returned, wrapped, for a packet whose TOC does not give
// a valid duration.
var ErrInvalidPacket = errors.New("oggopus: invalid opus packet")

// frameSamples maps a TOC configuration number (toc>>3) to the duration of
// one frame in 48 kHz samples (RFC 6716 section 3.1, table 2).
var frameSamples = [32]uint16{
	// SILK-only, NB, MB, WB: 10, 20, 40, 60 ms.
	480, 960, 1920, 2880,
	480, 960, 1920, 2880,
	480, 960, 1920, 2880,
	// Hybrid, SWB, FB: 10, 20 ms.
	480, 960,
	480, 960,
	// CELT-only, NB, WB, SWB, FB: 2.5, 5, 10, 20 ms.
	120, 240, 480, 960,
	120, 240, 480, 960,
	120, 240, 480, 960,
	120, 240, 480, 960,
}

// PacketDuration returns the duration of the Opus packet p in 48 kHz samples,
// read from its TOC byte (RFC 6716 section 3.1): the configuration toc>>3
// gives the frame size and toc&3 the frame count (code 3 reads the count from
// byte 1). Like libopus, it checks only what the duration needs: p must not be
// empty, a code 3 packet must have a count byte with a non-zero count, and
// the packet must not last more than 120 ms.
func PacketDuration(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, fmt.Errorf("%w: empty", ErrInvalidPacket)
	}
	toc := p[0]
	var frames int
	switch toc & 3 {
	case 0:
		frames = 1
	case 1, 2:
		frames = 2
	case 3:
		if len(p) < 2 {
			return 0, fmt.Errorf("%w: code 3 packet without frame count byte", ErrInvalidPacket)
		}
		frames = int(p[1] & 0x3f)
		if frames == 0 {
			return 0, fmt.Errorf("%w: code 3 packet with 0 frames", ErrInvalidPacket)
		}
	}
	n := frames * int(frameSamples[toc>>3])
	if n > maxPacketSamples {
		return 0, fmt.Errorf("%w: %d frames of %d samples exceed 120 ms", ErrInvalidPacket, frames, frameSamples[toc>>3])
	}
	return n, nil
}
