package testmedia

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	"github.com/pion/webrtc/v3/pkg/media/h264writer"
	"github.com/pion/webrtc/v3/pkg/media/ivfwriter"
)

// MTU is the packet size Packetize packetizes for, RTP header included.
const MTU = 1200

// clockRate is the RTP clock rate of every video codec.
const clockRate = 90000

// Packetize packetizes frames as a pion sender does, with
// rtp.NewPacketizer: MTU-byte packets, payload type pt, sequence numbers
// from 1, timestamps advancing by each frame's duration at 90 kHz, and the
// marker bit on the last packet of each frame. It returns the packets of
// each frame separately; slices.Concat makes them one stream.
func Packetize(frames []Frame, payloader rtp.Payloader, pt uint8) [][]*rtp.Packet {
	p := rtp.NewPacketizer(MTU, pt, 0x5eed, payloader, rtp.NewFixedSequencer(1), clockRate)
	out := make([][]*rtp.Packet, len(frames))
	for i, f := range frames {
		out[i] = p.Packetize(f.Data, samples(f.Duration))
	}
	return out
}

// samples converts d to RTP clock ticks, rounding to the nearest.
func samples(d time.Duration) uint32 {
	return uint32((d*clockRate + time.Second/2) / time.Second)
}

// DecodeVP8 checks and decodes pkts, received VP8 RTP packets in order.
// It reports every break in their sequence numbers, as a receiver would
// see the loss, then writes them to an IVF file with pion's ivfwriter
// (which starts at the first keyframe and assembles frames up to each
// marker bit) and decodes that with ffmpeg's libvpx decoder, the decoder
// browsers use: ffmpeg's own VP8 decoder conceals even a damaged first
// keyframe, while libvpx rejects it. It returns how many frames were
// decoded and the errors, one line each: sequence breaks first ("rtp:
// ..."), then the writer's, then ffmpeg's.
func DecodeVP8(tb testing.TB, pkts []*rtp.Packet) (frames int, errs []string) {
	tb.Helper()
	requireFFmpeg(tb)
	path := filepath.Join(tb.TempDir(), "received.ivf")
	w, err := ivfwriter.New(path, ivfwriter.WithCodec(webrtc.MimeTypeVP8))
	if err != nil {
		tb.Fatalf("testmedia: %v", err)
	}
	errs = append(sequenceBreaks(pkts), writeRTP(w, pkts)...)
	if err := w.Close(); err != nil {
		tb.Fatalf("testmedia: close %s: %v", path, err)
	}
	frames, ffErrs := decode(tb, path, "-c:v", "libvpx")
	return frames, append(errs, ffErrs...)
}

// DecodeH264 checks and decodes pkts, received H.264 RTP packets in
// order, as DecodeVP8 does: it reports sequence number breaks, writes the
// packets to an Annex-B file with pion's h264writer (which starts at the
// first packet carrying an SPS) and decodes that with ffmpeg's H.264
// decoder. It returns how many frames were decoded and the errors, one
// line each.
func DecodeH264(tb testing.TB, pkts []*rtp.Packet) (frames int, errs []string) {
	tb.Helper()
	requireFFmpeg(tb)
	path := filepath.Join(tb.TempDir(), "received.h264")
	w, err := h264writer.New(path)
	if err != nil {
		tb.Fatalf("testmedia: %v", err)
	}
	errs = append(sequenceBreaks(pkts), writeRTP(w, pkts)...)
	if err := w.Close(); err != nil {
		tb.Fatalf("testmedia: close %s: %v", path, err)
	}
	frames, ffErrs := decode(tb, path)
	return frames, append(errs, ffErrs...)
}

// sequenceBreaks reports each packet of pkts whose sequence number does not
// follow that of the packet before it.
func sequenceBreaks(pkts []*rtp.Packet) []string {
	var errs []string
	for i := 1; i < len(pkts); i++ {
		prev, seq := pkts[i-1].SequenceNumber, pkts[i].SequenceNumber
		if seq != prev+1 {
			errs = append(errs, fmt.Sprintf("rtp: sequence number %d follows %d", seq, prev))
		}
	}
	return errs
}

// writeRTP writes pkts to w and returns the errors, one per packet.
func writeRTP(w interface{ WriteRTP(*rtp.Packet) error }, pkts []*rtp.Packet) []string {
	var errs []string
	for _, p := range pkts {
		if err := w.WriteRTP(p); err != nil {
			errs = append(errs, fmt.Sprintf("write packet %d: %v", p.SequenceNumber, err))
		}
	}
	return errs
}

// decode decodes the video file at path with ffmpeg, with the input
// options in, and returns the number of frames decoded, one framemd5 line
// each, and ffmpeg's error lines. fps_mode passthrough keeps ffmpeg from
// dropping or duplicating frames to fit a frame rate.
func decode(tb testing.TB, path string, in ...string) (frames int, errs []string) {
	tb.Helper()
	args := []string{"-nostdin", "-hide_banner", "-v", "error"}
	args = append(args, in...)
	args = append(args, "-i", path, "-map", "0:v:0", "-fps_mode", "passthrough", "-f", "framemd5", "-")
	cmd := exec.Command("ffmpeg", args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		tb.Fatalf("testmedia: run ffmpeg: %v", err)
	}
	for l := range strings.Lines(stdout.String()) {
		if !strings.HasPrefix(l, "#") && strings.TrimSpace(l) != "" {
			frames++
		}
	}
	for l := range strings.Lines(stderr.String()) {
		if l = strings.TrimSpace(l); l != "" {
			errs = append(errs, l)
		}
	}
	if err != nil {
		errs = append(errs, fmt.Sprintf("ffmpeg: %v", err))
	}
	return frames, errs
}
