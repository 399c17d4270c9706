package oggopus

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestCRC(t *testing.T) {
	tests := []struct {
		in   string
		want uint32
	}{
		{"", 0},
		// CRC-32/MPEG-2 parameters with init 0 and no final XOR.
		{"123456789", 0x89a1897f},
	}
	for _, tt := range tests {
		if got := crcUpdate(0, []byte(tt.in)); got != tt.want {
			t.Errorf("crc(%q) = %08x, want %08x", tt.in, got, tt.want)
		}
	}
}

func TestHeaders(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want Head
		ven  string
	}{
		{"defaults", Config{}, Head{Version: 1, Channels: 2, PreSkip: 312, SampleRate: 48000}, "beep-router"},
		{"mono", Config{Serial: 7, Channels: 1, PreSkip: 3840, SampleRate: 16000, Vendor: "x",
			Comments: []string{"TITLE=bite", "ARTIST="}},
			Head{Version: 1, Channels: 1, PreSkip: 3840, SampleRate: 16000}, "x"},
		{"comment header over several pages", Config{Comments: []string{strings.Repeat("A", 200000)}},
			Head{Version: 1, Channels: 2, PreSkip: 312, SampleRate: 48000}, "beep-router"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tt.cfg.Serial != 0 && w.Serial() != tt.cfg.Serial {
				t.Errorf("Serial() = %d, want %d", w.Serial(), tt.cfg.Serial)
			}
			packets := repeat(SilentFrame, 5) // more than any pre-skip here
			for _, p := range packets {
				if err := w.WritePacket(p); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			checkStream(t, buf.Bytes(), packets)
			for i, pg := range parsePages(t, buf.Bytes()) {
				if pg.flags&flagEOS == 0 && pg.granule != 0 {
					t.Errorf("header page %d: granule %d, want 0", i, pg.granule)
				}
			}
			r, err := NewReader(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			if r.Head != tt.want || r.Vendor != tt.ven || len(r.Comments) != len(tt.cfg.Comments) {
				t.Errorf("got %+v %q %d comments, want %+v %q %d", r.Head, r.Vendor, len(r.Comments), tt.want, tt.ven, len(tt.cfg.Comments))
			}
			for i := range r.Comments {
				if r.Comments[i] != tt.cfg.Comments[i] {
					t.Errorf("comment %d differs", i)
				}
			}
		})
	}
}

func TestSerialsDiffer(t *testing.T) {
	a, _ := NewWriter(io.Discard, Config{})
	b, _ := NewWriter(io.Discard, Config{})
	c, _ := NewWriter(io.Discard, Config{})
	if a.Serial() == b.Serial() && b.Serial() == c.Serial() {
		t.Errorf("three random serials are all %08x", a.Serial())
	}
}

func TestNewWriterErrors(t *testing.T) {
	if _, err := NewWriter(io.Discard, Config{Channels: 3}); err == nil {
		t.Error("NewWriter with 3 channels: no error")
	}
	for n := range []int{0, 50, 100} {
		if _, err := NewWriter(&failWriter{n: n}, Config{}); !errors.Is(err, errFail) {
			t.Errorf("NewWriter on a writer failing after %d bytes: %v", n, err)
		}
	}
}

// TestWritePacket writes packets of many sizes and durations and reads them
// back.
func TestWritePacket(t *testing.T) {
	sizes := []int{1, 3, 100, 254, 255, 256, 509, 510, 511, 1275, 4000}
	tocs := []byte{toc(31, 0, 0), toc(1, 1, 0), toc(16, 0, 0), toc(15, 0, 1), toc(11, 0, 0)}
	tests := []struct {
		name    string
		packets [][]byte
		flushAt map[int]bool // Flush after these packets
		pages   int          // audio pages expected; 0 to skip
	}{
		{name: "one packet", packets: [][]byte{SilentFrame}, pages: 1},
		{name: "sizes", packets: func() (ps [][]byte) {
			for i := range 200 {
				ps = append(ps, mkPacket(tocs[i%len(tocs)], sizes[i%len(sizes)]))
			}
			return ps
		}()},
		{name: "one second per page", packets: repeat(mkPacket(toc(31, 0, 0), 80), 120), pages: 3},
		{name: "lacing table full", packets: repeat(mkPacket(toc(16, 0, 0), 10), 300), pages: 2},
		{name: "lacing table full with big packets", packets: repeat(mkPacket(toc(16, 0, 0), 600), 100), pages: 2},
		{name: "packet spanning pages", packets: [][]byte{SilentFrame, mkPacket(toc(31, 0, 0), 70000), SilentFrame}, pages: 3},
		{name: "packet of exactly 255 full segments", packets: [][]byte{mkPacket(toc(31, 0, 0), 255*255)}, pages: 2},
		{name: "packet filling a page", packets: [][]byte{mkPacket(toc(31, 0, 0), 254*255+254)}, pages: 1},
		{name: "flushes", packets: repeat(SilentFrame, 10), flushAt: map[int]bool{0: true, 3: true, 4: true, 9: true}, pages: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, Config{})
			if err != nil {
				t.Fatal(err)
			}
			var samples uint64
			for i, p := range tt.packets {
				if err := w.WritePacket(p); err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				d, _ := PacketDuration(p)
				samples += uint64(d)
				if tt.flushAt[i] {
					if err := w.Flush(); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if w.Samples() != samples {
				t.Errorf("Samples() = %d, want %d", w.Samples(), samples)
			}
			checkStream(t, buf.Bytes(), tt.packets)
			pages := parsePages(t, buf.Bytes())
			audio := len(pages) - 2
			if tt.flushAt[len(tt.packets)-1] {
				audio-- // the empty end-of-stream page
			}
			if tt.pages != 0 && audio != tt.pages {
				t.Errorf("%d audio pages, want %d", audio, tt.pages)
			}
		})
	}
}

func repeat(p []byte, n int) [][]byte {
	ps := make([][]byte, n)
	for i := range ps {
		ps[i] = p
	}
	return ps
}

func TestWriterErrors(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range [][]byte{nil, {}, {toc(31, 0, 3), 0}, {toc(31, 0, 3), 7}} {
		if err := w.WritePacket(p); !errors.Is(err, ErrInvalidPacket) {
			t.Errorf("WritePacket(% x) = %v, want ErrInvalidPacket", p, err)
		}
		if err := w.WriteRTP(p, 0); !errors.Is(err, ErrInvalidPacket) {
			t.Errorf("WriteRTP(% x) = %v, want ErrInvalidPacket", p, err)
		}
	}
	if w.Samples() != 0 {
		t.Errorf("invalid packets counted: Samples() = %d", w.Samples())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.WritePacket(SilentFrame); !errors.Is(err, ErrClosed) {
		t.Errorf("WritePacket after Close: %v", err)
	}
	if err := w.WriteRTP(SilentFrame, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("WriteRTP after Close: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush after Close: %v", err)
	}
}

func TestWriterStickyError(t *testing.T) {
	fw := &failWriter{n: 1 << 20}
	w, err := NewWriter(fw, Config{})
	if err != nil {
		t.Fatal(err)
	}
	fw.n = 0
	for range 49 {
		if err := w.WritePacket(SilentFrame); err != nil {
			t.Fatalf("buffered packet: %v", err)
		}
	}
	if err := w.WritePacket(SilentFrame); !errors.Is(err, errFail) {
		t.Fatalf("packet completing a page: %v, want errFail", err)
	}
	fw.n = 1 << 20
	if err := w.WritePacket(SilentFrame); !errors.Is(err, errFail) {
		t.Errorf("WritePacket after failure: %v", err)
	}
	if err := w.Flush(); !errors.Is(err, errFail) {
		t.Errorf("Flush after failure: %v", err)
	}
	if err := w.Close(); !errors.Is(err, errFail) {
		t.Errorf("Close after failure: %v", err)
	}
}

// TestShortStreams checks streams shorter than their pre-skip: Close pads
// them and trims the padding with the last granule position.
func TestShortStreams(t *testing.T) {
	tests := []struct {
		name    string
		packets [][]byte
		flush   bool
		granule uint64
	}{
		{"no packet", nil, false, 312},
		{"one 2.5 ms packet", [][]byte{{toc(16, 0, 0)}}, false, 312},
		{"one 2.5 ms packet flushed", [][]byte{{toc(16, 0, 0)}}, true, 312},
		{"one 10 ms packet", [][]byte{{toc(26, 0, 0)}}, false, 480},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, Config{})
			if err != nil {
				t.Fatal(err)
			}
			var samples uint64
			for _, p := range tt.packets {
				if err := w.WritePacket(p); err != nil {
					t.Fatal(err)
				}
				d, _ := PacketDuration(p)
				samples += uint64(d)
			}
			if tt.flush {
				if err := w.Flush(); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if w.Samples() != samples {
				t.Errorf("Samples() = %d after Close, want %d", w.Samples(), samples)
			}
			pages := parsePages(t, buf.Bytes())
			last := pages[len(pages)-1]
			if last.flags&flagEOS == 0 || last.granule != tt.granule {
				t.Errorf("last page: flags %#x granule %d, want EOS and %d", last.flags, last.granule, tt.granule)
			}
			r, err := NewReader(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatal(err)
			}
			for {
				if _, _, err := r.Next(); err != nil {
					if err != io.EOF {
						t.Fatal(err)
					}
					break
				}
			}
		})
	}
}

func TestWriteRTP(t *testing.T) {
	base := uint32(0xffff_f000) // wraps around after a few packets
	p20 := mkPacket(toc(31, 0, 0), 60)
	p10 := mkPacket(toc(26, 0, 0), 40)
	p60 := mkPacket(toc(11, 0, 0), 120)
	type step struct {
		ts   uint32
		p    []byte
		fill int   // silent frames expected before p
		err  error // expected error; ErrReordered drops p
	}
	contiguous := func(n int) (s []step) {
		for i := range n {
			s = append(s, step{ts: base + uint32(i*960), p: p20})
		}
		return s
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"contiguous", contiguous(120)},
		{"DTX gap of 400 ms", []step{
			{ts: base, p: p20},
			{ts: base + 960, p: p20},
			{ts: base + 2*960 + 400*48, p: p20, fill: 20},
			{ts: base + 3*960 + 400*48, p: p20},
		}},
		{"gap of 30 ms keeps the remainder", []step{
			{ts: base, p: p20},
			{ts: base + 960 + 1440, p: p20, fill: 1},
			{ts: base + 2*960 + 1440, p: p20},
			{ts: base + 3*960 + 1440 + 480, p: p20, fill: 1},
		}},
		{"gap under 20 ms is not filled", []step{
			{ts: base, p: p20},
			{ts: base + 960 + 959, p: p20},
			{ts: base + 2*960 + 959, p: p20},
		}},
		{"mixed durations", []step{
			{ts: base, p: p10},
			{ts: base + 480, p: p60},
			{ts: base + 480 + 2880 + 960, p: p20, fill: 1},
			{ts: base + 480 + 2880 + 960 + 960, p: p10},
		}},
		{"reordered and duplicate packets are dropped", []step{
			{ts: base, p: p20},
			{ts: base + 2*960, p: p20, fill: 1},
			{ts: base + 960, p: p20, err: ErrReordered},
			{ts: base + 2*960, p: p20, err: ErrReordered},
			{ts: base + 3*960, p: p20},
		}},
		{"gap over 10 s is capped", []step{
			{ts: base, p: p20},
			{ts: base + 960 + 15*48000, p: p20, fill: 500, err: ErrGapTooLong},
			{ts: base + 2*960 + 15*48000, p: p20},
			{ts: base + 3*960 + 15*48000 + 960, p: p20, fill: 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, Config{})
			if err != nil {
				t.Fatal(err)
			}
			var want [][]byte
			for i, s := range tt.steps {
				err := w.WriteRTP(s.p, s.ts)
				if s.err == nil && err != nil || !errors.Is(err, s.err) {
					t.Fatalf("step %d: WriteRTP = %v, want %v", i, err, s.err)
				}
				if errors.Is(s.err, ErrReordered) {
					continue
				}
				for range s.fill {
					want = append(want, SilentFrame)
				}
				want = append(want, s.p)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			checkStream(t, buf.Bytes(), want)
		})
	}
}

func TestDuration(t *testing.T) {
	w, err := NewWriter(io.Discard, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteRTP(SilentFrame, 1000); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteRTP(mkPacket(toc(16, 0, 0), 5), 1000+960+2*48000); err != nil {
		t.Fatal(err)
	}
	want := 20*time.Millisecond + 2*time.Second + 2500*time.Microsecond
	if w.Duration() != want || w.Samples() != 960+2*48000+120 {
		t.Errorf("Duration() = %v, Samples() = %d; want %v", w.Duration(), w.Samples(), want)
	}
}

func TestWriterDoesNotAllocate(t *testing.T) {
	w, err := NewWriter(io.Discard, Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := mkPacket(toc(31, 0, 0), 120)
	ts := uint32(0)
	for range 500 {
		if err := w.WriteRTP(p, ts); err != nil {
			t.Fatal(err)
		}
		ts += 960
	}
	if n := testing.AllocsPerRun(1000, func() {
		if err := w.WritePacket(p); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("WritePacket: %v allocs per packet", n)
	}
	ts = uint32(w.Samples())
	if n := testing.AllocsPerRun(1000, func() {
		ts += 960
		if ts%(960*20) == 0 {
			ts += 960 * 5 // a DTX gap every 20 packets
		}
		if err := w.WriteRTP(p, ts); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("WriteRTP: %v allocs per packet", n)
	}
}

func BenchmarkWriter(b *testing.B) {
	p := mkPacket(toc(31, 0, 0), 100) // about what Chromium sends at 40 kbit/s
	w, err := NewWriter(io.Discard, Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.WritePacket(p); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWriteRTP(b *testing.B) {
	p := mkPacket(toc(31, 0, 0), 100)
	w, err := NewWriter(io.Discard, Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	ts := uint32(0)
	for i := 0; i < b.N; i++ {
		if err := w.WriteRTP(p, ts); err != nil {
			b.Fatal(err)
		}
		ts += 960
	}
}
