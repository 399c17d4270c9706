package testmedia

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/pion/rtp/codecs/av1/obu"
	"github.com/pion/rtp/codecs/vp9"
	"github.com/pion/webrtc/v3/pkg/media/h264reader"
	"github.com/pion/webrtc/v3/pkg/media/ivfreader"
)

// Frame is one encoded video frame of a fixture.
type Frame struct {
	// Data is the frame as an RTP payloader takes it: a VP8 or VP9 frame,
	// an AV1 temporal unit (OBUs with size fields), or an H.264 access
	// unit in Annex-B form (each NAL unit after a 4-byte start code).
	Data []byte
	// Duration is how long the frame shows: 1/30 s.
	Duration time.Duration
	// Keyframe reports whether a decoder can start at this frame.
	Keyframe bool
}

// frameDuration is the duration of every fixture frame.
const frameDuration = time.Second / rate

// Frames reads the frames of the fixture at path: an IVF file of VP8, VP9
// or AV1, or an H.264 Annex-B byte stream. It fails tb if the file cannot
// be read or parsed.
func Frames(tb testing.TB, path string) []Frame {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("testmedia: %v", err)
	}
	var frames []Frame
	if bytes.HasPrefix(b, []byte("DKIF")) {
		frames, err = ivfFrames(b)
	} else {
		frames, err = annexBFrames(b)
	}
	if err != nil {
		tb.Fatalf("testmedia: read %s: %v", path, err)
	}
	return frames
}

// ivfFrames reads the frames of an IVF file.
func ivfFrames(b []byte) ([]Frame, error) {
	r, h, err := ivfreader.NewWith(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("IVF header: %w", err)
	}
	var key func([]byte) bool
	switch h.FourCC {
	case "VP80":
		key = vp8Key
	case "VP90":
		key = vp9Key
	case "AV01":
		key = av1Key
	default:
		return nil, fmt.Errorf("IVF codec %q not supported", h.FourCC)
	}
	var frames []Frame
	for {
		data, _, err := r.ParseNextFrame()
		if errors.Is(err, io.EOF) {
			return frames, nil
		}
		if err != nil {
			return nil, fmt.Errorf("IVF frame %d: %w", len(frames), err)
		}
		frames = append(frames, Frame{Data: data, Duration: frameDuration, Keyframe: key(data)})
	}
}

// vp8Key reports whether a VP8 frame is a key frame: bit 0 of its frame
// tag, the inverse key frame flag, is clear (RFC 6386 section 9.1).
func vp8Key(f []byte) bool { return len(f) > 0 && f[0]&0x01 == 0 }

// vp9Key reports whether a VP9 frame is a key frame, going by its
// uncompressed header.
func vp9Key(f []byte) bool {
	var h vp9.Header
	return h.Unmarshal(f) == nil && !h.ShowExistingFrame && !h.NonKeyFrame
}

// av1Key reports whether an AV1 temporal unit starts with a key frame: its
// first frame header has show_existing_frame 0 and frame_type KEY_FRAME
// (AV1 specification section 5.9.2; the fixture has no reduced still
// picture header).
func av1Key(tu []byte) bool {
	for len(tu) > 0 {
		h, err := obu.ParseOBUHeader(tu)
		if err != nil || !h.HasSizeField {
			return false
		}
		size, n, err := obu.ReadLeb128(tu[h.Size():])
		start := h.Size() + int(n)
		if err != nil || uint(len(tu)-start) < size {
			return false
		}
		payload := tu[start : start+int(size)]
		tu = tu[start+int(size):]
		if h.Type == obu.OBUFrame || h.Type == obu.OBUFrameHeader {
			// show_existing_frame (1 bit), then frame_type (2 bits).
			return len(payload) > 0 && payload[0]&0xe0 == 0
		}
	}
	return false
}

// H.264 NAL unit types (H.264 table 7-1).
const (
	naluSlice = 1
	naluIDR   = 5
	naluSEI   = 6
	naluSPS   = 7
	naluPPS   = 8
	naluAUD   = 9
)

// annexBFrames groups the NAL units of an Annex-B byte stream into access
// units (H.264 section 7.4.1.2.3): an access unit ends before an AUD, SEI,
// SPS, PPS or NAL unit of types 14 to 18 that follows a slice, and before
// a slice that starts a new picture (first_mb_in_slice 0; the baseline
// fixture has no arbitrary slice order). h264reader drops SEI.
func annexBFrames(b []byte) ([]Frame, error) {
	r, err := h264reader.NewReader(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		return nil, err
	}
	var (
		frames []Frame
		au     Frame
		slices bool // au holds a slice
	)
	for {
		nal, err := r.NextNAL()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("NAL unit after %d frames: %w", len(frames), err)
		}
		typ := nal.UnitType
		if slices && startsAccessUnit(nal) {
			frames = append(frames, au)
			au, slices = Frame{}, false
		}
		switch typ {
		case naluIDR:
			au.Keyframe = true
			slices = true
		case naluSlice:
			slices = true
		}
		au.Data = append(au.Data, 0, 0, 0, 1)
		au.Data = append(au.Data, nal.Data...)
		au.Duration = frameDuration
	}
	if slices {
		frames = append(frames, au)
	}
	return frames, nil
}

// startsAccessUnit reports whether nal, following a slice, starts a new
// access unit.
func startsAccessUnit(nal *h264reader.NAL) bool {
	switch t := nal.UnitType; {
	case t == naluSlice || t == naluIDR:
		// first_mb_in_slice, coded ue(v), is 0 when its first bit is 1.
		return len(nal.Data) > 1 && nal.Data[1]&0x80 != 0
	case t == naluSEI || t == naluSPS || t == naluPPS || t == naluAUD:
		return true
	default:
		return t >= 14 && t <= 18
	}
}
