package stages

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// biteCollector is a stage that keeps the bites it is given.
type biteCollector struct{ bites []*pipeline.Bite }

func (c *biteCollector) Open(*room.Track, pipeline.Emit) (pipeline.Processor, error) {
	return collectProc{c}, nil
}
func (c *biteCollector) Close(context.Context) error { return nil }

type collectProc struct{ c *biteCollector }

func (collectProc) HandlePacket(*pipeline.Packet) bool { return true }
func (p collectProc) HandleBite(b *pipeline.Bite)      { p.c.bites = append(p.c.bites, b) }
func (collectProc) Close()                             {}

type nopSink struct{}

func (nopSink) Open(*room.Track) (rtc.TrackSink, error) { return nil, nil }

// env returns a session manager with alice in conv-1, and her track.
func env(t testing.TB) (*room.Manager, *room.Track) {
	t.Helper()
	m, err := room.New(room.Config{Sink: nopSink{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	if err := m.Join("alice", "conv-1"); err != nil {
		t.Fatal(err)
	}
	return m, room.NewTrack(m.User("alice"), rtc.NewUpTrack(claim.Claim{UserID: "alice", ClientID: "phone"}, 42, 1))
}

// step is one packet to feed: its level and how far its timestamp jumps
// beyond the previous packet's end (DTX).
type step struct {
	level int // -1: no level extension
	gap   time.Duration
}

func steps(n, level int) []step {
	s := make([]step, n)
	for i := range s {
		s[i].level = level
	}
	return s
}

func concat(parts ...[]step) []step {
	var out []step
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func feed(t *testing.T, sink rtc.TrackSink, seq []step) {
	t.Helper()
	ts := uint32(1000)
	at := time.Unix(1_700_000_000, 0)
	for i, s := range seq {
		ts += uint32(s.gap * 48000 / time.Second)
		at = at.Add(20*time.Millisecond + s.gap)
		p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: uint16(i), Timestamp: ts, SSRC: 42}, Payload: []byte{0xf8, 0xff, 0xfe}}
		if s.level >= 0 {
			_ = p.SetExtension(1, []byte{byte(s.level)})
		}
		raw, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if err := sink.WriteRTP(raw, at); err != nil {
			t.Fatal(err)
		}
		ts += 960
	}
}

func TestChunker(t *testing.T) {
	tests := []struct {
		name   string
		format string
		seq    []step
		want   []time.Duration // bite durations
	}{
		{"silence only", "", steps(100, 127), nil},
		{"one utterance, pre-roll and tail", "", concat(steps(20, 127), steps(30, 10), steps(40, 127)),
			// 100 ms pre-roll + 600 ms speech + 100 ms tail
			[]time.Duration{800 * time.Millisecond}},
		{"two utterances", "", concat(steps(30, 10), steps(30, 127), steps(30, 10), steps(30, 127)),
			[]time.Duration{700 * time.Millisecond, 800 * time.Millisecond}},
		{"short pause keeps one bite", "", concat(steps(30, 10), steps(10, 127), steps(30, 10)),
			[]time.Duration{1400 * time.Millisecond}},
		{"max duration", "", steps(300, 10), // 6 s of speech
			[]time.Duration{5 * time.Second, time.Second}},
		{"track end flushes", "", steps(10, 10), []time.Duration{200 * time.Millisecond}},
		{"no level extension: DTX gap cuts", "", concat(steps(10, -1), []step{{level: -1, gap: 600 * time.Millisecond}}, steps(9, -1)),
			[]time.Duration{200 * time.Millisecond, 200 * time.Millisecond}},
		{"rtp format: one packet per bite", pipeline.FormatRTP, steps(3, 127),
			[]time.Duration{20 * time.Millisecond, 20 * time.Millisecond, 20 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, track := env(t)
			_ = m
			s := *chunkerKind.Defaults().(*ChunkerSettings)
			if tt.format != "" {
				s.Format = tt.format
			}
			ch, err := NewChunker(s, nil)
			if err != nil {
				t.Fatal(err)
			}
			col := &biteCollector{}
			p := pipeline.New(map[string]pipeline.Stage{"gate": &Gate{}, "chunker": ch, "collect": col}, "gate", "chunker", "collect")
			sink, err := p.Open(track)
			if err != nil {
				t.Fatal(err)
			}
			feed(t, sink, tt.seq)
			sink.Close()
			if len(col.bites) != len(tt.want) {
				t.Fatalf("got %d bites, want %d", len(col.bites), len(tt.want))
			}
			for i, b := range col.bites {
				if b.Duration != tt.want[i] {
					t.Errorf("bite %d lasts %v, want %v", i, b.Duration, tt.want[i])
				}
				if b.Seq != uint64(i) || b.Conversation != "conv-1" || b.UserID != "alice" || b.ClientID != "phone" {
					t.Errorf("bite %d: %+v", i, b)
				}
				if b.Format == pipeline.FormatOggOpus {
					checkOggDuration(t, b.Data, b.Duration)
				}
			}
		})
	}
}

func checkOggDuration(t *testing.T, data []byte, d time.Duration) {
	t.Helper()
	r, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var samples int
	for {
		pkt, _, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		n, _ := oggopus.PacketDuration(pkt)
		samples += n
	}
	if got := time.Duration(samples) * time.Second / 48000; got != d {
		t.Fatalf("ogg holds %v, bite says %v", got, d)
	}
}

func TestChunkerMoveClosesBite(t *testing.T) {
	m, track := env(t)
	ch, _ := NewChunker(*chunkerKind.Defaults().(*ChunkerSettings), nil)
	col := &biteCollector{}
	p := pipeline.New(map[string]pipeline.Stage{"gate": &Gate{}, "chunker": ch, "collect": col}, "gate", "chunker", "collect")
	sink, _ := p.Open(track)
	feed(t, sink, steps(10, 10))
	if err := m.Join("alice", "conv-2"); err != nil {
		t.Fatal(err)
	}
	feed(t, sink, steps(10, 10))
	sink.Close()
	if len(col.bites) != 2 || col.bites[0].Conversation != "conv-1" || col.bites[1].Conversation != "conv-2" {
		t.Fatalf("bites: %d", len(col.bites))
	}
}

func TestChunkerSettings(t *testing.T) {
	def := *chunkerKind.Defaults().(*ChunkerSettings)
	bad := []func(s *ChunkerSettings){
		func(s *ChunkerSettings) { s.Format = "mp3" },
		func(s *ChunkerSettings) { s.ThresholdDBov = 3 },
		func(s *ChunkerSettings) { s.Silence = 0 },
		func(s *ChunkerSettings) { s.MaxDuration = pipeline.Duration(time.Hour) },
		func(s *ChunkerSettings) { s.Preroll = pipeline.Duration(2 * time.Second) },
	}
	for i, f := range bad {
		s := def
		f(&s)
		if _, err := NewChunker(s, nil); err == nil {
			t.Errorf("case %d: bad settings accepted: %+v", i, s)
		}
	}
}
