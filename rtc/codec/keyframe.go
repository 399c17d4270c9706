package codec

import (
	"strings"

	"github.com/pion/webrtc/v3"
)

// Keyframe reports whether payload, the payload of one RTP packet of codec
// mime, starts a keyframe: it is the first packet of a frame that a decoder
// can begin decoding at, without any earlier frame. It looks at this one
// packet only, allocates nothing, and returns false for truncated or
// malformed payloads and for codecs other than VP8, H264, VP9 and AV1.
//
// Per codec, a packet starts a keyframe when:
//
//   - VP8 (RFC 7741): it starts partition 0 of a frame (S set, PID 0) and
//     the VP8 payload header is that of a key frame (P clear, followed by
//     the key frame start code).
//   - H264 (RFC 6184): it carries an SPS, or the start of the first slice
//     (first_mb_in_slice 0) of an IDR picture, as a single NAL unit, inside
//     a STAP-A, or as the first fragment of an FU-A. A keyframe usually
//     comes as SPS, PPS, then IDR slices, so both the packet with the SPS
//     and the one with the IDR picture's first slice report true.
//   - VP9 (RFC 9628): it starts a frame (B set) that is not inter-picture
//     predicted (P clear) and, when the layer indices are present, belongs
//     to spatial layer 0; flexible and non-flexible mode alike.
//   - AV1 (AV1 RTP specification, section 4.4): its aggregation header has
//     N set (first packet of a coded video sequence, which senders set on
//     keyframes) and Z clear (it does not continue an earlier OBU).
func Keyframe(mime string, payload []byte) bool {
	switch {
	case strings.EqualFold(mime, webrtc.MimeTypeVP8):
		return vp8Keyframe(payload)
	case strings.EqualFold(mime, webrtc.MimeTypeH264):
		return h264Keyframe(payload)
	case strings.EqualFold(mime, webrtc.MimeTypeVP9):
		return vp9Keyframe(payload)
	case strings.EqualFold(mime, webrtc.MimeTypeAV1):
		return av1Keyframe(payload)
	}
	return false
}

// VP8 payload descriptor bits (RFC 7741 section 4.2).
const (
	vp8X   = 0x80 // extended control bits present
	vp8S   = 0x10 // start of a partition
	vp8PID = 0x07 // partition index
	vp8I   = 0x80 // picture ID present
	vp8L   = 0x40 // TL0PICIDX present
	vp8T   = 0x20 // TID present
	vp8K   = 0x10 // KEYIDX present
	vp8M   = 0x80 // 15-bit picture ID
	vp8P   = 0x01 // inverse key frame flag of the frame tag
)

// vp8Keyframe implements Keyframe for VP8.
func vp8Keyframe(p []byte) bool {
	if len(p) < 1 || p[0]&vp8S == 0 || p[0]&vp8PID != 0 {
		return false
	}
	n := 1
	if p[0]&vp8X != 0 {
		if len(p) < 2 {
			return false
		}
		x := p[1]
		n = 2
		if x&vp8I != 0 {
			if len(p) <= n {
				return false
			}
			if p[n]&vp8M != 0 {
				n++
			}
			n++
		}
		if x&vp8L != 0 {
			n++
		}
		if x&(vp8T|vp8K) != 0 {
			n++
		}
	}
	// A key frame starts with a 3-byte frame tag and the start code
	// 0x9d 0x01 0x2a (RFC 6386 section 9.1).
	if len(p) < n+6 {
		return false
	}
	h := p[n:]
	return h[0]&vp8P == 0 && h[3] == 0x9d && h[4] == 0x01 && h[5] == 0x2a
}

// H264 NAL unit types (RFC 6184 section 5.2, H.264 table 7-1).
const (
	h264IDR   = 5
	h264SPS   = 7
	h264STAPA = 24
	h264FUA   = 28

	h264Type      = 0x1f // NAL unit type bits
	h264Forbidden = 0x80 // forbidden_zero_bit
	h264FUStart   = 0x80 // start bit of the FU header
)

// h264Keyframe implements Keyframe for H264.
func h264Keyframe(p []byte) bool {
	if len(p) < 1 || p[0]&h264Forbidden != 0 {
		return false
	}
	switch p[0] & h264Type {
	case h264STAPA:
		return h264STAPAKeyframe(p[1:])
	case h264FUA:
		if len(p) < 2 || p[1]&h264FUStart == 0 {
			return false
		}
		// The FU header stands in for the NAL header: the slice
		// header follows it directly.
		return h264KeyNAL(p[1]&h264Type, p[2:])
	default:
		return h264KeyNAL(p[0]&h264Type, p[1:])
	}
}

// h264STAPAKeyframe reports whether the aggregation units of a STAP-A
// (after its 1-byte header) hold a NAL unit that starts a keyframe. A
// STAP-A whose units overrun the payload is malformed.
func h264STAPAKeyframe(p []byte) bool {
	key := false
	for len(p) > 0 {
		if len(p) < 2 {
			return false
		}
		size := int(p[0])<<8 | int(p[1])
		p = p[2:]
		if size == 0 || size > len(p) {
			return false
		}
		nal := p[:size]
		p = p[size:]
		if nal[0]&h264Forbidden == 0 && h264KeyNAL(nal[0]&h264Type, nal[1:]) {
			key = true
		}
	}
	return key
}

// h264KeyNAL reports whether a NAL unit of type typ whose payload (after
// the NAL header) starts with rbsp starts a keyframe: an SPS, or an IDR
// slice with first_mb_in_slice 0. first_mb_in_slice is the first field of
// the slice header, coded ue(v); it is 0 exactly when the first bit is 1.
func h264KeyNAL(typ byte, rbsp []byte) bool {
	switch typ {
	case h264SPS:
		return true
	case h264IDR:
		return len(rbsp) > 0 && rbsp[0]&0x80 != 0
	}
	return false
}

// VP9 payload descriptor bits (RFC 9628 section 4.2).
const (
	vp9I   = 0x80 // picture ID present
	vp9P   = 0x40 // inter-picture predicted frame
	vp9L   = 0x20 // layer indices present
	vp9F   = 0x10 // flexible mode
	vp9B   = 0x08 // start of a frame
	vp9M   = 0x80 // 15-bit picture ID
	vp9SID = 0x0e // spatial layer ID in the layer indices byte
)

// vp9Keyframe implements Keyframe for VP9.
func vp9Keyframe(p []byte) bool {
	if len(p) < 1 {
		return false
	}
	d := p[0]
	if d&vp9B == 0 || d&vp9P != 0 {
		return false
	}
	n := 1
	if d&vp9I != 0 {
		if len(p) <= n {
			return false
		}
		if p[n]&vp9M != 0 {
			n++
		}
		n++
	} else if d&vp9F != 0 {
		// Flexible mode requires the picture ID.
		return false
	}
	if d&vp9L != 0 {
		if len(p) <= n || p[n]&vp9SID != 0 {
			return false
		}
		n++
		if d&vp9F == 0 {
			n++ // TL0PICIDX, non-flexible mode only
		}
	}
	// With P clear there are no reference indices; the scalability
	// structure (V) is not parsed. Demand at least one byte of frame.
	return len(p) > n
}

// AV1 aggregation header bits (AV1 RTP specification section 4.4).
const (
	av1Z = 0x80 // first OBU element continues an OBU of the previous packet
	av1N = 0x08 // first packet of a coded video sequence
)

// av1Keyframe implements Keyframe for AV1.
func av1Keyframe(p []byte) bool {
	return len(p) > 1 && p[0]&av1N != 0 && p[0]&av1Z == 0
}
