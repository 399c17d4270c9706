package stages

import (
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/pipeline"
)

// Opus TOC bytes for the abuse tests.
const (
	toc20ms  = 0xf8 // CELT FB, one 20 ms frame
	toc120ms = 0x19 // SILK NB, two 60 ms frames
)

// apkt is one packet as a (mis)behaving publisher sends it: its RTP
// timestamp, when it reaches the router, and its TOC byte.
type apkt struct {
	ts  uint32
	at  time.Duration // arrival, after the start
	toc byte
}

// abuseStart is the arrival time of the tests' first packet.
var abuseStart = time.Unix(1_700_000_000, 0)

// run feeds pkts (all loud, in conv-1) to a chunker's processor directly,
// with explicit arrival times, and returns the bites and the stats.
func runChunker(t testing.TB, format string, pkts []apkt) ([]*pipeline.Bite, map[string]uint64) {
	t.Helper()
	m, track := env(t)
	s := *chunkerKind.Defaults().(*ChunkerSettings)
	if format != "" {
		s.Format = format
	}
	ch, err := NewChunker(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	var bites []*pipeline.Bite
	proc, err := ch.Open(track, func(b *pipeline.Bite) { bites = append(bites, b) })
	if err != nil {
		t.Fatal(err)
	}
	conv := m.Conversation("conv-1")
	if conv == nil {
		t.Fatal("no conv-1")
	}
	for i, a := range pkts {
		payload := []byte{a.toc, 0xff, 0xfe}
		p := pipeline.Packet{Track: track, Conversation: conv, Arrival: abuseStart.Add(a.at), HasLevel: true, Level: 10, Raw: payload}
		p.RTP.Header = rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: a.ts, SSRC: 42}
		p.RTP.Payload = payload
		proc.HandlePacket(&p)
	}
	proc.Close()
	return bites, ch.Stats()
}

// speech returns n packets of toc every 20 ms of arrival from at, with
// timestamps from ts advancing by step.
func speech(n int, ts, step uint32, at time.Duration, toc byte) []apkt {
	out := make([]apkt, n)
	for i := range out {
		out[i] = apkt{ts: ts + uint32(i)*step, at: at + time.Duration(i)*20*time.Millisecond, toc: toc}
	}
	return out
}

// checkBites checks the invariants every track's bites keep, whatever the
// publisher sends: each claims no more audio than the arrival time since
// its first packet (to the last packet fed, end) plus the jitter allowance,
// the bites are at most biteBurst plus maxBiteRate per second of arrival
// time, and all claim at most the arrival span plus jitter per bite.
func checkBites(t *testing.T, bites []*pipeline.Bite, end time.Duration) {
	t.Helper()
	last := abuseStart.Add(end)
	var total time.Duration
	for i, b := range bites {
		if limit := last.Sub(b.Start) + biteJitter; b.Duration > limit {
			t.Errorf("bite %d claims %v, more than its arrival span allows (%v)", i, b.Duration, limit)
		}
		total += b.Duration
	}
	if limit := biteBurst + int(maxBiteRate*end/time.Second); len(bites) > limit {
		t.Errorf("%d bites in %v of arrival time, want at most %d", len(bites), end, limit)
	}
	if limit := end + time.Duration(len(bites))*biteJitter; total > limit {
		t.Errorf("bites claim %v of audio in %v of arrival time", total, end)
	}
}

func TestChunkerSlowTimestamps(t *testing.T) {
	for _, tt := range []struct {
		name string
		step uint32 // RTP samples per 20 ms packet
	}{
		{"1-sample steps", 1},
		{"100-sample steps", 100},
		{"half speed", 480},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pkts := speech(750, 1000, tt.step, 0, toc20ms) // 15 s
			bites, _ := runChunker(t, "", pkts)
			if len(bites) == 0 {
				t.Fatal("no bites")
			}
			checkBites(t, bites, pkts[len(pkts)-1].at)
			// Cut at max_duration of arrival time: 5 s each.
			if len(bites) > 4 {
				t.Errorf("%d bites from 15 s of speech, want at most 4", len(bites))
			}
		})
	}
}

func TestChunkerTimestampJumps(t *testing.T) {
	const hour = 3600 * 48000
	back := func(n uint32) uint32 { return -n }
	for _, tt := range []struct {
		name string
		jump uint32 // added to the timestamps of the second half
	}{
		{"backward 1 h", back(hour)},
		{"backward 2 s", back(2 * 48000)},
		{"forward 3 h", 3 * hour},
		{"forward 13 h (wraps past 2^31)", 13 * hour},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// 2 s of speech, the jump, 2 s more, then 2 s more after a
			// pause: bites must keep coming after the jump.
			pkts := speech(100, 5_000_000_000&0xffffffff, 960, 0, toc20ms)
			next := pkts[99].ts + 960 + tt.jump
			pkts = append(pkts, speech(100, next, 960, 2*time.Second, toc20ms)...)
			pkts = append(pkts, speech(100, next+100*960+48000, 960, 5*time.Second, toc20ms)...)
			bites, stats := runChunker(t, "", pkts)
			if got := stats["timestamp_jumps"]; got != 1 {
				t.Errorf("timestamp_jumps = %d, want 1", got)
			}
			if len(bites) != 3 {
				t.Fatalf("got %d bites, want 3 (before the jump, after it, after the pause)", len(bites))
			}
			for i, b := range bites {
				if b.Duration < 1900*time.Millisecond || b.Duration > 2*time.Second {
					t.Errorf("bite %d lasts %v, want 2 s", i, b.Duration)
				}
				checkOggDuration(t, b.Data, b.Duration)
			}
			if want := abuseStart.Add(2 * time.Second); !bites[1].Start.Equal(want) {
				t.Errorf("second bite starts at %v, want at the jump (%v)", bites[1].Start, want)
			}
			checkBites(t, bites, pkts[len(pkts)-1].at)
		})
	}
}

func TestChunkerLyingTOC(t *testing.T) {
	// 2 s of 20 ms packets whose TOC claims 120 ms each.
	pkts := speech(100, 1000, 960, 0, toc120ms)
	bites, stats := runChunker(t, "", pkts)
	var d time.Duration
	for _, b := range bites {
		d += b.Duration
	}
	span := pkts[99].at - pkts[0].at
	if d > span+biteJitter {
		t.Errorf("%d bites: duration_ms %d, more than the arrival span %v + jitter %v", len(bites), d.Milliseconds(), span, biteJitter)
	}
	if len(bites) != 1 {
		t.Fatalf("got %d bites, want 1", len(bites))
	}
	if stats["duration_clamped"] != 1 {
		t.Errorf("duration_clamped = %d, want 1", stats["duration_clamped"])
	}
	checkBites(t, bites, pkts[99].at)
}

func TestChunkerFlood(t *testing.T) {
	// 9,000 packets/s of 20 ms audio for 1 s of arrival time.
	const n = 9000
	pkts := make([]apkt, n)
	for i := range pkts {
		pkts[i] = apkt{ts: uint32(i) * 960, at: time.Duration(i) * time.Second / n, toc: toc20ms}
	}
	end := pkts[n-1].at
	for _, format := range []string{pipeline.FormatOggOpus, pipeline.FormatRTP} {
		t.Run(format, func(t *testing.T) {
			bites, stats := runChunker(t, format, pkts)
			taken := uint64(packetBurst + maxPacketRate*end/time.Second)
			if got := stats["drop_rate"]; got < n-taken {
				t.Errorf("drop_rate = %d, want at least %d", got, n-taken)
			}
			var total time.Duration
			for _, b := range bites {
				total += b.Duration
			}
			if total > end+biteJitter+200*time.Millisecond {
				t.Errorf("%d bites claim %v of audio from %v of arrival time", len(bites), total, end)
			}
			if format == pipeline.FormatOggOpus {
				checkBites(t, bites, end)
			} else if uint64(len(bites)) > taken {
				t.Errorf("%d rtp bites, want at most %d", len(bites), taken)
			}
		})
	}
}

// A jump of the router's own clock back (the wall clock set) must not stop
// a track's bites: the limiters start over.
func TestChunkerClockStepBack(t *testing.T) {
	pkts := speech(100, 1000, 960, time.Hour, toc20ms)
	pkts = append(pkts, speech(100, 1000+100*960, 960, 0, toc20ms)...)
	bites, stats := runChunker(t, "", pkts)
	if len(bites) != 2 || stats["drop_rate"] != 0 {
		t.Fatalf("got %d bites, %d dropped packets; want 2, 0", len(bites), stats["drop_rate"])
	}
}
