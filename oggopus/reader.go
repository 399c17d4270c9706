package oggopus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxPacketSize bounds the packets a Reader assembles, so that garbage input
// cannot make it allocate without limit.
const MaxPacketSize = 1 << 24

// ErrFormat is returned, wrapped, for input that is not a valid Ogg Opus
// stream: bad capture pattern, CRC, sequence number, flags or headers.
var ErrFormat = errors.New("oggopus: invalid stream")

// Head is the Ogg Opus identification header (RFC 7845 section 5.1).
type Head struct {
	// Version is the header version; 1 for RFC 7845 streams.
	Version uint8
	// Channels is the number of output channels.
	Channels uint8
	// PreSkip is the number of 48 kHz samples to discard at the start.
	PreSkip uint16
	// SampleRate is the original input rate, for information; 0 if unknown.
	SampleRate uint32
	// OutputGain is the gain to apply at decode, in Q7.8 dB.
	OutputGain int16
	// MappingFamily is the channel mapping family; 0 for mono or stereo.
	MappingFamily uint8
}

// page is one parsed Ogg page; lacing and body alias the pageReader's
// buffer until the next call.
type page struct {
	flags   byte
	granule uint64
	serial  uint32
	seq     uint32
	lacing  []byte
	body    []byte
}

// pageReader reads the pages of one logical Ogg stream, checking CRCs,
// serial and sequence numbers and the beginning-of-stream flag.
type pageReader struct {
	r      io.Reader
	hdr    [pageHeaderLen]byte
	buf    []byte
	pages  int
	serial uint32
	seq    uint32
}

// next reads one page. It returns io.EOF only at a clean page boundary.
func (pr *pageReader) next() (page, error) {
	var pg page
	if _, err := io.ReadFull(pr.r, pr.hdr[:]); err != nil {
		if err != io.EOF {
			err = fmt.Errorf("oggopus: page %d header: %w", pr.pages, err)
		}
		return pg, err
	}
	h := pr.hdr[:]
	if string(h[:4]) != "OggS" {
		return pg, fmt.Errorf("%w: page %d: no OggS capture pattern", ErrFormat, pr.pages)
	}
	if h[4] != 0 {
		return pg, fmt.Errorf("%w: page %d: version %d", ErrFormat, pr.pages, h[4])
	}
	pg.flags = h[5]
	pg.granule = binary.LittleEndian.Uint64(h[6:])
	pg.serial = binary.LittleEndian.Uint32(h[14:])
	pg.seq = binary.LittleEndian.Uint32(h[18:])
	sum := binary.LittleEndian.Uint32(h[22:])
	nseg := int(h[26])
	if cap(pr.buf) < nseg {
		pr.buf = make([]byte, nseg, 4096)
	}
	pr.buf = pr.buf[:nseg]
	if _, err := io.ReadFull(pr.r, pr.buf); err != nil {
		return pg, fmt.Errorf("oggopus: page %d lacing: %w", pr.pages, noEOF(err))
	}
	size := 0
	for _, l := range pr.buf {
		size += int(l)
	}
	if cap(pr.buf) < nseg+size {
		nb := make([]byte, nseg, nseg+size)
		copy(nb, pr.buf)
		pr.buf = nb
	}
	pr.buf = pr.buf[:nseg+size]
	if _, err := io.ReadFull(pr.r, pr.buf[nseg:]); err != nil {
		return pg, fmt.Errorf("oggopus: page %d body: %w", pr.pages, noEOF(err))
	}
	clear(h[22:26])
	crc := crcUpdate(crcUpdate(0, h), pr.buf)
	binary.LittleEndian.PutUint32(h[22:], sum)
	if crc != sum {
		return pg, fmt.Errorf("%w: page %d: crc %08x, want %08x", ErrFormat, pr.pages, sum, crc)
	}
	switch {
	case pr.pages == 0 && pg.flags&flagBOS == 0:
		return pg, fmt.Errorf("%w: first page lacks the beginning-of-stream flag", ErrFormat)
	case pr.pages > 0 && pg.flags&flagBOS != 0:
		return pg, fmt.Errorf("%w: page %d: beginning-of-stream flag (multiplexed streams are not supported)", ErrFormat, pr.pages)
	case pr.pages > 0 && pg.serial != pr.serial:
		return pg, fmt.Errorf("%w: page %d: serial %08x, want %08x", ErrFormat, pr.pages, pg.serial, pr.serial)
	case pr.pages > 0 && pg.seq != pr.seq+1:
		return pg, fmt.Errorf("%w: page %d: sequence number %d after %d (lost or reordered page)", ErrFormat, pr.pages, pg.seq, pr.seq)
	}
	pr.serial, pr.seq = pg.serial, pg.seq
	pr.pages++
	pg.lacing = pr.buf[:nseg]
	pg.body = pr.buf[nseg:]
	return pg, nil
}

// noEOF turns an io.EOF inside a page into io.ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Reader parses an Ogg Opus stream and returns its Opus packets in order.
// It reads a single logical stream (no multiplexed or chained streams).
type Reader struct {
	// Head is the stream's identification header.
	Head Head
	// Vendor and Comments come from the comment header.
	Vendor   string
	Comments []string

	pr       pageReader
	queue    [][]byte // packets completed on the current page
	qi       int
	qgranule uint64
	partial  []byte // a packet continued on the next page
	granule  uint64 // last granule position seen, for monotonicity
	eos      bool
	err      error
}

// NewReader reads and validates the identification and comment header
// pages of the Ogg Opus stream on r.
func NewReader(r io.Reader) (*Reader, error) {
	rd := &Reader{pr: pageReader{r: r}}
	if err := rd.readPage(); err != nil {
		return nil, fmt.Errorf("oggopus: id header: %w", err)
	}
	if len(rd.queue) != 1 || len(rd.partial) > 0 {
		return nil, fmt.Errorf("%w: first page must hold only the id header", ErrFormat)
	}
	if err := rd.parseHead(rd.queue[0]); err != nil {
		return nil, err
	}
	rd.queue = rd.queue[:0]
	for len(rd.queue) == 0 {
		if rd.eos {
			return nil, fmt.Errorf("%w: stream ends before the comment header", ErrFormat)
		}
		if err := rd.readPage(); err != nil {
			return nil, fmt.Errorf("oggopus: comment header: %w", err)
		}
	}
	if len(rd.queue) != 1 || len(rd.partial) > 0 {
		return nil, fmt.Errorf("%w: audio shares the comment header's last page", ErrFormat)
	}
	if err := rd.parseTags(rd.queue[0]); err != nil {
		return nil, err
	}
	rd.queue = rd.queue[:0]
	return rd, nil
}

// Next returns the next Opus packet and the granule position of the page on
// which it ends (for the last packet of a page, the 48 kHz sample count up
// to its end, pre-skip included). It returns io.EOF after the packets of the
// end-of-stream page, and io.ErrUnexpectedEOF, wrapped, if the input ends
// without one. The packet is the caller's to keep.
func (r *Reader) Next() (packet []byte, granule uint64, err error) {
	for r.qi >= len(r.queue) {
		if r.err != nil {
			return nil, 0, r.err
		}
		if r.eos {
			return nil, 0, io.EOF
		}
		if err := r.readPage(); err != nil {
			if err == io.EOF {
				err = fmt.Errorf("oggopus: stream ends without end-of-stream page: %w", io.ErrUnexpectedEOF)
			}
			r.err = err
			return nil, 0, err
		}
	}
	p := r.queue[r.qi]
	r.queue[r.qi] = nil
	r.qi++
	return p, r.qgranule, nil
}

// readPage reads one page and queues the packets completed on it.
func (r *Reader) readPage() error {
	pg, err := r.pr.next()
	if err != nil {
		return err
	}
	cont := pg.flags&flagContinued != 0
	if cont != (len(r.partial) > 0) {
		if cont {
			return fmt.Errorf("%w: page %d continues a packet that was not started", ErrFormat, pg.seq)
		}
		return fmt.Errorf("%w: page %d does not continue the unfinished packet", ErrFormat, pg.seq)
	}
	r.queue = r.queue[:0]
	r.qi = 0
	// One allocation for the packets that start and end on this page.
	body := bytes.Clone(pg.body)
	start, off := 0, 0
	for _, l := range pg.lacing {
		off += int(l)
		if l == 255 {
			continue
		}
		if len(r.partial) > 0 {
			if len(r.partial)+off-start > MaxPacketSize {
				return fmt.Errorf("%w: packet larger than %d bytes", ErrFormat, MaxPacketSize)
			}
			p := append(r.partial, body[start:off]...)
			r.queue = append(r.queue, p)
			r.partial = nil
		} else {
			r.queue = append(r.queue, body[start:off:off])
		}
		start = off
	}
	if start < off { // the page ends inside a packet
		if len(r.partial)+off-start > MaxPacketSize {
			return fmt.Errorf("%w: packet larger than %d bytes", ErrFormat, MaxPacketSize)
		}
		r.partial = append(r.partial, body[start:off]...)
	}
	if len(r.queue) > 0 {
		if pg.granule == noGranule {
			return fmt.Errorf("%w: page %d ends packets but has no granule position", ErrFormat, pg.seq)
		}
		if pg.granule < r.granule {
			return fmt.Errorf("%w: page %d granule position %d after %d", ErrFormat, pg.seq, pg.granule, r.granule)
		}
		r.granule = pg.granule
		r.qgranule = pg.granule
	}
	if pg.flags&flagEOS != 0 {
		if len(r.partial) > 0 {
			return fmt.Errorf("%w: end-of-stream page %d ends inside a packet", ErrFormat, pg.seq)
		}
		r.eos = true
	}
	return nil
}

// parseHead parses the identification header p into r.Head.
func (r *Reader) parseHead(p []byte) error {
	if len(p) < 19 || string(p[:8]) != "OpusHead" {
		return fmt.Errorf("%w: first packet is not an OpusHead", ErrFormat)
	}
	h := Head{
		Version:       p[8],
		Channels:      p[9],
		PreSkip:       binary.LittleEndian.Uint16(p[10:]),
		SampleRate:    binary.LittleEndian.Uint32(p[12:]),
		OutputGain:    int16(binary.LittleEndian.Uint16(p[16:])),
		MappingFamily: p[18],
	}
	switch {
	case h.Version>>4 != 0:
		return fmt.Errorf("%w: OpusHead version %d", ErrFormat, h.Version)
	case h.Channels == 0:
		return fmt.Errorf("%w: OpusHead with 0 channels", ErrFormat)
	case h.MappingFamily == 0 && h.Channels > 2:
		return fmt.Errorf("%w: OpusHead mapping family 0 with %d channels", ErrFormat, h.Channels)
	case h.MappingFamily != 0 && len(p) < 21+int(h.Channels):
		return fmt.Errorf("%w: OpusHead channel mapping table truncated", ErrFormat)
	}
	r.Head = h
	return nil
}

// parseTags parses the comment header p into r.Vendor and r.Comments.
func (r *Reader) parseTags(p []byte) error {
	if len(p) < 16 || string(p[:8]) != "OpusTags" {
		return fmt.Errorf("%w: second packet is not an OpusTags", ErrFormat)
	}
	p = p[8:]
	str := func() (string, bool) {
		if len(p) < 4 {
			return "", false
		}
		n := binary.LittleEndian.Uint32(p)
		if uint64(n) > uint64(len(p)-4) {
			return "", false
		}
		s := string(p[4 : 4+n])
		p = p[4+n:]
		return s, true
	}
	vendor, ok := str()
	if !ok || len(p) < 4 {
		return fmt.Errorf("%w: OpusTags vendor string truncated", ErrFormat)
	}
	count := binary.LittleEndian.Uint32(p)
	p = p[4:]
	if uint64(count) > uint64(len(p)/4) {
		return fmt.Errorf("%w: OpusTags claims %d comments in %d bytes", ErrFormat, count, len(p))
	}
	comments := make([]string, 0, count)
	for range count {
		c, ok := str()
		if !ok {
			return fmt.Errorf("%w: OpusTags comment truncated", ErrFormat)
		}
		comments = append(comments, c)
	}
	r.Vendor, r.Comments = vendor, comments
	return nil
}
