package oggopus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"
)

// Page header flags (RFC 3533 section 6).
const (
	flagContinued = 0x01
	flagBOS       = 0x02
	flagEOS       = 0x04
)

const (
	pageHeaderLen = 27
	maxSegments   = 255
	// pageTargetSamples is the audio after which a Writer ends a page.
	pageTargetSamples = SampleRate
	// maxGapFrames caps the silence WriteRTP inserts for one gap (10 s).
	maxGapFrames = 10 * SampleRate / silentSamples
	// noGranule is the granule position of a page on which no packet ends.
	noGranule = ^uint64(0)
)

// Defaults used for zero Config fields.
const (
	DefaultChannels   = 2
	DefaultPreSkip    = 312
	DefaultSampleRate = 48000
	DefaultVendor     = "beep-router"
)

// Errors returned, wrapped, by Writer methods.
var (
	// ErrClosed is returned by writes to a closed Writer.
	ErrClosed = errors.New("oggopus: writer closed")
	// ErrReordered is returned by WriteRTP for a packet whose timestamp is
	// not after the previous packet's; the packet is dropped.
	ErrReordered = errors.New("oggopus: rtp timestamp went backwards")
	// ErrGapTooLong is returned by WriteRTP when a gap exceeds 10 s: the
	// packet is written after 10 s of silence and the excess is dropped.
	ErrGapTooLong = errors.New("oggopus: rtp gap longer than 10s")
)

// Config of one Ogg Opus stream.
type Config struct {
	// Serial is the Ogg bitstream serial number; pick a fresh one per
	// stream. 0 means a random one.
	Serial uint32
	// Channels is 1 or 2; 0 means 2 (WebRTC Opus is signalled as 2 channels).
	Channels uint8
	// PreSkip is the number of 48 kHz samples the decoder discards at the
	// start; 0 means DefaultPreSkip (312, the libopus encoder lookahead).
	PreSkip uint16
	// SampleRate is the original input rate noted in the ID header; 0 means
	// 48000. It does not change how the stream is coded.
	SampleRate uint32
	// Vendor is the comment header's vendor string; "" means "beep-router".
	Vendor string
	// Comments are optional user comments, each "NAME=value".
	Comments []string
}

// Writer muxes Opus packets into an Ogg Opus stream on an io.Writer.
// A Writer is not safe for concurrent use.
type Writer struct {
	out io.Writer
	cfg Config

	seq       uint32 // sequence number of the next page
	samples   uint64 // 48 kHz samples of all packets written
	started   bool   // the BOS page has been written
	headers   bool   // header pages are being written: granule 0
	continued bool   // the next page continues an unfinished packet
	closed    bool
	err       error // sticky error from out

	// The page being built.
	lacing      [maxSegments]byte
	nseg        int
	body        []byte
	completed   bool // a packet ends on this page
	pageSamples int  // audio on this page
	page        []byte

	// WriteRTP state.
	rtpStarted bool
	lastTS     uint32 // timestamp of the last packet written
	rtpPos     uint64 // sample position where that packet should have started
}

// NewWriter returns a Writer for the stream described by cfg and writes the
// identification header page and the comment header page to w. The Writer
// never closes w.
func NewWriter(w io.Writer, cfg Config) (*Writer, error) {
	if cfg.Channels == 0 {
		cfg.Channels = DefaultChannels
	}
	if cfg.Channels > 2 {
		return nil, fmt.Errorf("oggopus: %d channels: only 1 or 2 are supported (mapping family 0)", cfg.Channels)
	}
	if cfg.PreSkip == 0 {
		cfg.PreSkip = DefaultPreSkip
	}
	if cfg.SampleRate == 0 {
		cfg.SampleRate = DefaultSampleRate
	}
	if cfg.Vendor == "" {
		cfg.Vendor = DefaultVendor
	}
	if cfg.Serial == 0 {
		cfg.Serial = rand.Uint32()
	}
	ow := &Writer{out: w, cfg: cfg, headers: true, body: make([]byte, 0, 4096)}

	// ID header, RFC 7845 section 5.1.
	var head [19]byte
	copy(head[:], "OpusHead")
	head[8] = 1 // version
	head[9] = cfg.Channels
	binary.LittleEndian.PutUint16(head[10:], cfg.PreSkip)
	binary.LittleEndian.PutUint32(head[12:], cfg.SampleRate)
	// Output gain 0 (bytes 16-17) and mapping family 0 (byte 18).
	if err := ow.appendPacket(head[:], 0); err != nil {
		return nil, fmt.Errorf("oggopus: write id header: %w", err)
	}
	if err := ow.flushPage(0); err != nil {
		return nil, fmt.Errorf("oggopus: write id header: %w", err)
	}

	// Comment header, RFC 7845 section 5.2.
	n := 8 + 4 + len(cfg.Vendor) + 4
	for _, c := range cfg.Comments {
		n += 4 + len(c)
	}
	tags := make([]byte, 0, n)
	tags = append(tags, "OpusTags"...)
	tags = binary.LittleEndian.AppendUint32(tags, uint32(len(cfg.Vendor)))
	tags = append(tags, cfg.Vendor...)
	tags = binary.LittleEndian.AppendUint32(tags, uint32(len(cfg.Comments)))
	for _, c := range cfg.Comments {
		tags = binary.LittleEndian.AppendUint32(tags, uint32(len(c)))
		tags = append(tags, c...)
	}
	if err := ow.appendPacket(tags, 0); err != nil {
		return nil, fmt.Errorf("oggopus: write comment header: %w", err)
	}
	if err := ow.flushPage(0); err != nil {
		return nil, fmt.Errorf("oggopus: write comment header: %w", err)
	}
	ow.headers = false
	return ow, nil
}

// Serial returns the stream's Ogg bitstream serial number.
func (w *Writer) Serial() uint32 { return w.cfg.Serial }

// PreSkip returns the stream's pre-skip in 48 kHz samples.
func (w *Writer) PreSkip() uint16 { return w.cfg.PreSkip }

// Samples reports the 48 kHz samples written so far, silence inserted by
// WriteRTP included.
func (w *Writer) Samples() uint64 { return w.samples }

// Duration reports the audio written so far, Samples at 48 kHz. It ignores
// pre-skip: a decoder plays Duration minus pre-skip.
func (w *Writer) Duration() time.Duration {
	s := w.samples
	return time.Duration(s/SampleRate)*time.Second +
		time.Duration(s%SampleRate)*time.Second/SampleRate
}

// WritePacket appends one Opus packet. Its duration comes from its TOC byte
// (see PacketDuration); an empty or invalid packet is refused with an error
// wrapping ErrInvalidPacket. p is copied and may be reused by the caller.
func (w *Writer) WritePacket(p []byte) error {
	if err := w.usable(); err != nil {
		return err
	}
	d, err := PacketDuration(p)
	if err != nil {
		return fmt.Errorf("oggopus: write packet: %w", err)
	}
	return w.appendPacket(p, d)
}

// WriteRTP appends the payload of an RTP packet whose 48 kHz RTP timestamp
// is ts. When ts is 20 ms or more past the end of the audio written so far
// (DTX or loss), the gap is first filled with SilentFrame packets so that the
// stream keeps real time; a remainder under 20 ms is not filled. A fill is
// capped at 10 s: the packet is then written after 10 s of silence, the
// excess is forgotten and an error wrapping ErrGapTooLong is returned.
// A timestamp not after the previous packet's (reordering or duplicate) drops
// the packet with an error wrapping ErrReordered. Timestamps wrap around
// modulo 2^32 as in RTP.
func (w *Writer) WriteRTP(payload []byte, ts uint32) error {
	if err := w.usable(); err != nil {
		return err
	}
	d, err := PacketDuration(payload)
	if err != nil {
		return fmt.Errorf("oggopus: write rtp ts %d: %w", ts, err)
	}
	if !w.rtpStarted {
		w.rtpStarted = true
		w.lastTS = ts
		w.rtpPos = w.samples
		return w.appendPacket(payload, d)
	}
	delta := int32(ts - w.lastTS)
	if delta <= 0 {
		return fmt.Errorf("oggopus: write rtp ts %d after %d: %w", ts, w.lastTS, ErrReordered)
	}
	w.lastTS = ts
	w.rtpPos += uint64(delta)
	var gapErr error
	if w.rtpPos >= w.samples+silentSamples {
		frames := (w.rtpPos - w.samples) / silentSamples
		if frames > maxGapFrames {
			// Forget the excess: later packets are placed relative to
			// this one.
			excess := (frames - maxGapFrames) * silentSamples
			w.rtpPos -= excess
			frames = maxGapFrames
			gapErr = fmt.Errorf("oggopus: write rtp ts %d: dropped %v of silence: %w",
				ts, time.Duration(excess)*time.Second/SampleRate, ErrGapTooLong)
		}
		for range frames {
			if err := w.appendPacket(SilentFrame, silentSamples); err != nil {
				return err
			}
		}
	}
	if err := w.appendPacket(payload, d); err != nil {
		return err
	}
	return gapErr
}

// Flush ends the current page, if it holds any packet, and writes it; the
// next packet starts a new page.
func (w *Writer) Flush() error {
	if err := w.usable(); err != nil {
		return err
	}
	if w.nseg == 0 {
		return nil
	}
	return w.flushPage(0)
}

// Close writes the last page with the end-of-stream flag. If every packet
// has already been flushed, the last page is an empty one. A stream shorter
// than its pre-skip (one with no packet, say) gets silent packets that its
// final granule position trims away, so that it still decodes, to nothing.
// Close does not close the underlying io.Writer; closing twice is a no-op.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	if w.samples >= uint64(w.cfg.PreSkip) {
		return w.flushPage(flagEOS)
	}
	// Decoders refuse a stream that ends inside its pre-skip, an empty one
	// included: pad it with silence, then end-trim the padding away with the
	// last page's granule position (RFC 7845 section 4.5) so that it decodes
	// to nothing.
	written := w.samples
	for w.samples < uint64(w.cfg.PreSkip) {
		if err := w.appendPacket(SilentFrame, silentSamples); err != nil {
			return err
		}
	}
	w.samples = uint64(w.cfg.PreSkip)
	err := w.flushPage(flagEOS)
	w.samples = written
	return err
}

// usable reports why the Writer can take no more packets, if it cannot.
func (w *Writer) usable() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrClosed
	}
	return nil
}

// appendPacket adds packet p lasting samples to the page being built,
// writing pages as they fill. A packet that does not fit on the current page
// starts a new one; a packet too long for any page (over 64770 bytes)
// continues over several pages.
func (w *Writer) appendPacket(p []byte, samples int) error {
	need := len(p)/255 + 1
	if w.nseg > 0 && w.nseg+need > maxSegments {
		if err := w.flushPage(0); err != nil {
			return err
		}
	}
	for need > maxSegments-w.nseg {
		room := maxSegments - w.nseg
		w.body = append(w.body, p[:room*255]...)
		for i := range room {
			w.lacing[w.nseg+i] = 255
		}
		w.nseg = maxSegments
		p = p[room*255:]
		need -= room
		if err := w.flushPage(0); err != nil {
			return err
		}
	}
	w.body = append(w.body, p...)
	for range len(p) / 255 {
		w.lacing[w.nseg] = 255
		w.nseg++
	}
	w.lacing[w.nseg] = byte(len(p) % 255)
	w.nseg++
	w.completed = true
	w.samples += uint64(samples)
	w.pageSamples += samples
	if w.pageSamples >= pageTargetSamples {
		return w.flushPage(0)
	}
	return nil
}

// flushPage writes the page being built with the given extra flags and
// starts a new one.
func (w *Writer) flushPage(flags byte) error {
	if w.err != nil {
		return w.err
	}
	granule := noGranule
	if w.completed || w.headers {
		// Header pages have granule 0: w.samples is 0 until audio.
		granule = w.samples
	}
	if !w.started {
		flags |= flagBOS
	}
	if w.continued {
		flags |= flagContinued
	}
	n := pageHeaderLen + w.nseg + len(w.body)
	if cap(w.page) < n {
		w.page = make([]byte, n, n+n/4)
	}
	pg := w.page[:n]
	copy(pg, "OggS")
	pg[4] = 0 // version
	pg[5] = flags
	binary.LittleEndian.PutUint64(pg[6:], granule)
	binary.LittleEndian.PutUint32(pg[14:], w.cfg.Serial)
	binary.LittleEndian.PutUint32(pg[18:], w.seq)
	binary.LittleEndian.PutUint32(pg[22:], 0)
	pg[26] = byte(w.nseg)
	copy(pg[pageHeaderLen:], w.lacing[:w.nseg])
	copy(pg[pageHeaderLen+w.nseg:], w.body)
	binary.LittleEndian.PutUint32(pg[22:], crcUpdate(0, pg))

	w.started = true
	w.continued = w.nseg > 0 && w.lacing[w.nseg-1] == 255
	w.seq++
	w.nseg = 0
	w.body = w.body[:0]
	w.completed = false
	w.pageSamples = 0
	if _, err := w.out.Write(pg); err != nil {
		w.err = fmt.Errorf("oggopus: write page %d: %w", w.seq-1, err)
		return w.err
	}
	return nil
}
