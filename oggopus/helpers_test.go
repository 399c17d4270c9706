package oggopus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"
)

// testPage is a page as parsed by the tests.
type testPage struct {
	flags   byte
	granule uint64
	seq     uint32
	serial  uint32
	lacing  []byte
	ends    int // packets that end on the page
	raw     []byte
}

// parsePages splits data into pages with the package's page reader (which
// checks CRCs, serial and sequence numbers) and fails on anything left over.
func parsePages(t testing.TB, data []byte) []testPage {
	t.Helper()
	pr := pageReader{r: bytes.NewReader(data)}
	var pages []testPage
	off := 0
	for {
		pg, err := pr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("page %d: %v", len(pages), err)
		}
		n := pageHeaderLen + len(pg.lacing) + len(pg.body)
		tp := testPage{
			flags:   pg.flags,
			granule: pg.granule,
			seq:     pg.seq,
			serial:  pg.serial,
			lacing:  slices.Clone(pg.lacing),
			raw:     data[off : off+n],
		}
		for _, l := range pg.lacing {
			if l < 255 {
				tp.ends++
			}
		}
		off += n
		pages = append(pages, tp)
	}
	return pages
}

// checkStream checks that data is a valid Ogg Opus stream holding exactly
// the packets want: flags, granule positions (at the page level and as Next
// reports them) and the packets themselves.
func checkStream(t testing.TB, data []byte, want [][]byte) {
	t.Helper()
	pages := parsePages(t, data)
	if len(pages) < 3 {
		t.Fatalf("%d pages, want at least 3 (two headers, one audio)", len(pages))
	}
	for i, pg := range pages {
		wantFlags := byte(0)
		if i == 0 {
			wantFlags |= flagBOS
		}
		if i == len(pages)-1 {
			wantFlags |= flagEOS
		}
		if got := pg.flags &^ flagContinued; got != wantFlags {
			t.Errorf("page %d: flags %#x, want %#x", i, got, wantFlags)
		}
		if pg.serial != pages[0].serial {
			t.Errorf("page %d: serial %08x, want %08x", i, pg.serial, pages[0].serial)
		}
	}
	if pages[0].granule != 0 || pages[0].ends != 1 || len(pages[0].lacing) != 1 {
		t.Errorf("id header page: granule %d, %d packets", pages[0].granule, pages[0].ends)
	}

	// Expected granule position after each packet.
	cum := make([]uint64, len(want))
	var total uint64
	for i, p := range want {
		d, err := PacketDuration(p)
		if err != nil {
			t.Fatalf("want[%d]: %v", i, err)
		}
		total += uint64(d)
		cum[i] = total
	}

	// Page-level granules: audio pages start after the comment header.
	first := 1
	for pages[first].ends == 0 {
		first++
	}
	done := 0
	for i := first + 1; i < len(pages); i++ {
		pg := pages[i]
		done += pg.ends
		switch {
		case pg.ends == 0 && pg.granule != noGranule:
			t.Errorf("page %d ends no packet but has granule %d", i, pg.granule)
		case pg.ends > 0 && done > len(want):
			t.Fatalf("page %d: %d packets ended, want %d in all", i, done, len(want))
		case pg.ends > 0 && pg.granule != cum[done-1]:
			t.Errorf("page %d: granule %d, want %d (after %d packets)", i, pg.granule, cum[done-1], done)
		}
	}
	if done != len(want) {
		t.Errorf("%d packets in pages, want %d", done, len(want))
	}

	// Packet level, through the Reader.
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("NewReader: %v", err)
	}
	for i := 0; ; i++ {
		p, g, err := r.Next()
		if err == io.EOF {
			if i != len(want) {
				t.Errorf("Reader returned %d packets, want %d", i, len(want))
			}
			break
		}
		if err != nil {
			t.Fatalf("Next %d: %v", i, err)
		}
		if i >= len(want) {
			t.Fatalf("Reader returned more than %d packets", len(want))
		}
		if !bytes.Equal(p, want[i]) {
			t.Fatalf("packet %d: % .20x (%d bytes), want % .20x (%d bytes)", i, p, len(p), want[i], len(want[i]))
		}
		if g < cum[i] {
			t.Errorf("packet %d: granule %d before its end %d", i, g, cum[i])
		}
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Errorf("Next after EOF: %v", err)
	}
}

// fixCRC recomputes the checksum of an Ogg page in place.
func fixCRC(pg []byte) {
	binary.LittleEndian.PutUint32(pg[22:], 0)
	binary.LittleEndian.PutUint32(pg[22:], crcUpdate(0, pg))
}

// failWriter fails every write after the first n bytes.
type failWriter struct {
	n int
}

var errFail = errors.New("disk full")

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errFail
	}
	w.n -= len(p)
	return len(p), nil
}

// mkPacket returns an Opus packet of n bytes (n >= 1) with the given TOC.
func mkPacket(tocByte byte, n int) []byte {
	p := make([]byte, n)
	p[0] = tocByte
	for i := 1; i < n; i++ {
		p[i] = byte(i*7 + n)
	}
	return p
}
