package oggopus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// testStream returns a valid stream of n packets (n/50 + 1 audio pages).
func testStream(t testing.TB, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Config{Serial: 42})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := w.WritePacket(mkPacket(toc(31, 0, 0), 20+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReaderErrors damages a valid stream in various ways: the Reader must
// report each damage, from NewReader or from Next.
func TestReaderErrors(t *testing.T) {
	good := testStream(t, 120)
	pages := parsePages(t, good)
	if len(pages) != 5 {
		t.Fatalf("%d pages, want 5", len(pages))
	}
	// join concatenates pages, optionally editing a copy of one.
	join := func(skip int, edit int, f func(pg []byte)) []byte {
		var out []byte
		for i, pg := range pages {
			if i == skip {
				continue
			}
			if i == edit {
				c := bytes.Clone(pg.raw)
				f(c)
				fixCRC(c)
				out = append(out, c...)
				continue
			}
			out = append(out, pg.raw...)
		}
		return out
	}
	audio := len(pages[0].raw) + len(pages[1].raw) // offset of the first audio page
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty input", nil, io.EOF},
		{"not ogg", []byte("RIFF0000WAVEfmt "), io.ErrUnexpectedEOF},
		{"not ogg, long", bytes.Repeat([]byte("RIFF0000WAVEfmt "), 4), ErrFormat},
		{"bad crc in header", func() []byte {
			b := bytes.Clone(good)
			b[30] ^= 1
			return b
		}(), ErrFormat},
		{"bad crc in audio", func() []byte {
			b := bytes.Clone(good)
			b[audio+100] ^= 0x80
			return b
		}(), ErrFormat},
		{"truncated in a page", good[:len(good)-10], io.ErrUnexpectedEOF},
		{"truncated in a page header", good[:audio+10], io.ErrUnexpectedEOF},
		{"no end-of-stream page", good[:len(good)-len(pages[4].raw)], io.ErrUnexpectedEOF},
		{"lost page", join(3, -1, nil), ErrFormat},
		{"lost comment page", join(1, -1, nil), ErrFormat},
		{"other serial", join(-1, 3, func(pg []byte) { pg[14]++ }), ErrFormat},
		{"version 1", join(-1, 2, func(pg []byte) { pg[4] = 1 }), ErrFormat},
		{"no BOS flag", join(-1, 0, func(pg []byte) { pg[5] = 0 }), ErrFormat},
		{"second BOS flag", join(-1, 2, func(pg []byte) { pg[5] |= flagBOS }), ErrFormat},
		{"continued flag without packet", join(-1, 2, func(pg []byte) { pg[5] |= flagContinued }), ErrFormat},
		{"granule -1 on a page ending packets", join(-1, 2, func(pg []byte) {
			binary.LittleEndian.PutUint64(pg[6:], noGranule)
		}), ErrFormat},
		{"granule going backwards", join(-1, 3, func(pg []byte) {
			binary.LittleEndian.PutUint64(pg[6:], 10)
		}), ErrFormat},
		{"not OpusHead", join(-1, 0, func(pg []byte) { pg[28] = 'X' }), ErrFormat},
		{"OpusHead version 16", join(-1, 0, func(pg []byte) { pg[28+8] = 16 }), ErrFormat},
		{"OpusHead 0 channels", join(-1, 0, func(pg []byte) { pg[28+9] = 0 }), ErrFormat},
		{"OpusHead 3 channels family 0", join(-1, 0, func(pg []byte) { pg[28+9] = 3 }), ErrFormat},
		{"OpusHead family 1 without table", join(-1, 0, func(pg []byte) { pg[28+18] = 1 }), ErrFormat},
		{"not OpusTags", join(-1, 1, func(pg []byte) { pg[28] = 'X' }), ErrFormat},
		{"OpusTags vendor too long", join(-1, 1, func(pg []byte) { pg[28+8] = 200 }), ErrFormat},
		{"OpusTags too many comments", join(-1, 1, func(pg []byte) { pg[len(pg)-1] = 5 }), ErrFormat},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := NewReader(bytes.NewReader(tt.data))
			for err == nil {
				_, _, err = r.Next()
			}
			if !errors.Is(err, tt.want) || (tt.want != io.EOF && err == io.EOF) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestReaderReadsAfterEOS(t *testing.T) {
	good := testStream(t, 120)
	// Trailing garbage after the end-of-stream page is not read.
	data := append(bytes.Clone(good), "garbage"...)
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		_, _, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n != 120 {
		t.Errorf("%d packets, want 120", n)
	}
}

// continuedStream returns a small stream whose second packet continues over
// two pages, built by hand: a Writer splits only packets over 64 KB, too big
// for a fuzzing seed.
func continuedStream(t testing.TB) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Config{Channels: 1, Comments: []string{"A=1"}})
	if err != nil {
		t.Fatal(err)
	}
	p := mkPacket(toc(31, 0, 0), 300)
	if err := w.WritePacket(p); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	buf.Write(buildPage(0, noGranule, w.Serial(), 3, []byte{255}, p[:255]))
	buf.Write(buildPage(flagContinued|flagEOS, 2*960, w.Serial(), 4, []byte{45}, p[255:]))
	return buf.Bytes()
}

func TestContinuedPacket(t *testing.T) {
	p := mkPacket(toc(31, 0, 0), 300)
	checkStream(t, continuedStream(t), [][]byte{p, p})
}

func FuzzReader(f *testing.F) {
	// Small seeds: the fuzzer minimizes big inputs slowly.
	f.Add(testStream(f, 3))
	seed := continuedStream(f)
	f.Add(seed)
	f.Add(seed[:200])
	f.Add([]byte("OggS"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		total := 0
		for {
			p, _, err := r.Next()
			if err != nil {
				return
			}
			total += len(p)
			if total > len(data) {
				t.Fatalf("read %d bytes of packets from %d bytes", total, len(data))
			}
		}
	})
}

// buildPage returns an Ogg page with the given fields and a valid CRC.
func buildPage(flags byte, granule uint64, serial, seq uint32, lacing, body []byte) []byte {
	pg := make([]byte, pageHeaderLen, pageHeaderLen+len(lacing)+len(body))
	copy(pg, "OggS")
	pg[5] = flags
	binary.LittleEndian.PutUint64(pg[6:], granule)
	binary.LittleEndian.PutUint32(pg[14:], serial)
	binary.LittleEndian.PutUint32(pg[18:], seq)
	pg[26] = byte(len(lacing))
	pg = append(append(pg, lacing...), body...)
	fixCRC(pg)
	return pg
}
