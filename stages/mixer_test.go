package stages

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/mix"
	"github.com/beepvoice/router/pipeline"
	"github.com/beepvoice/router/room"
)

// TestMixerSettings: the mixer's settings are validated at start, and a
// bad value is refused with an error that names the stage and the setting.
func TestMixerSettings(t *testing.T) {
	tests := []struct {
		name     string
		settings string // YAML of the mixer's settings
		wantErr  string // "" for settings that build
		mode     room.MixMode
	}{
		{"defaults", "", "", room.MixOverflow},
		{"always", "{mode: always}", "", room.MixAlways},
		{"off", "{mode: off}", "", room.MixOff},
		{"unknown mode", "{mode: sometimes}", `mode "sometimes": want off, overflow or always`, 0},
		{"jitter too short", "{jitter: 5ms}", "jitter 5ms: want 20ms to 200ms", 0},
		{"jitter too long", "{jitter: 1s}", "jitter 1s: want 20ms to 200ms", 0},
		{"bitrate", "{bitrate: 1000}", "bitrate 1000: want 6000 to 510000", 0},
		{"hangover", "{hangover: 10ms}", "hangover 10ms: want at least 20ms", 0},
		{"complexity", "{complexity: 11}", "complexity 11: want 0 to 10", 0},
		{"unknown setting", "{volume: 11}", "field volume not found", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := pipeline.NewRegistry()
			Register(reg)
			y := "stages:\n  - name: permission-gate\n  - name: forwarder\n  - name: mix-for-phones\n    kind: mixer\n"
			if tt.settings != "" {
				y += "    settings: " + tt.settings + "\n"
			}
			cfg, err := pipeline.ParseConfig(strings.NewReader(y))
			if err != nil {
				t.Fatal(err)
			}
			p, err := reg.Build(cfg, pipeline.Env{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), `pipeline stage "mix-for-phones"`) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming the stage and containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			defer func() { _ = p.Close(t.Context()) }()
			m := p.Mixing()
			switch {
			case tt.mode == room.MixOff && m != nil:
				t.Errorf("mode off: the pipeline offers the room a mixing policy")
			case tt.mode != room.MixOff && (m == nil || m.MixMode() != tt.mode):
				t.Errorf("pipeline's mixing %v, want mode %v", m, tt.mode)
			}
		})
	}
}

// mixPacket is a speaker's packet for the mixer: one 20 ms Opus frame.
func mixPacket(tb testing.TB, m *room.Manager, track *room.Track) *pipeline.Packet {
	tb.Helper()
	p := &pipeline.Packet{Track: track, Conversation: m.Conversation("conv-1"), Arrival: time.Now()}
	p.RTP = rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 42}, Payload: []byte{0xf8, 0xff, 0xfe}}
	return p
}

// testSession starts a mixing session for conv-1 whose engine only moves
// its queue when the test sends a tick (the mixer clock stays at frame 0:
// nothing is decoded), so that the packet path is measured alone.
func testSession(tb testing.TB, m *room.Manager) (*mixSession, chan time.Time) {
	tb.Helper()
	st, err := NewMixer(DefaultMixerSettings, pipeline.Env{})
	if err != nil {
		tb.Fatal(err)
	}
	ticks := make(chan time.Time)
	start := time.Now()
	st.cfg.Start, st.cfg.Ticks = start, ticks
	s := st.StartMixing(m.Conversation("conv-1")).(*mixSession)
	tb.Cleanup(func() {
		s.Stop()
		_ = st.Close(context.Background())
	})
	return s, ticks
}

// TestMixerPushAllocatesNothing: the packet path of a mixed speaker (the
// processor's checks and the push into the bounded queue) allocates
// nothing, and a full queue drops and counts without blocking.
func TestMixerPushAllocatesNothing(t *testing.T) {
	m, track := env(t)
	s, ticks := testSession(t, m)
	p := mixPacket(t, m, track)
	proc := mixerProc{}
	// 101 runs: within the queue, which no tick drains.
	if a := testing.AllocsPerRun(100, func() {
		p.RTP.Timestamp += 960
		proc.HandlePacket(p) // not mixed: the policy marked nothing
		s.push(p)
	}); a != 0 {
		t.Errorf("%.1f allocations per packet, want 0", a)
	}
	// Drains the queue, mixes nothing; the second send returns once the
	// first tick is done. The second tick's drain may still take some of
	// the pushes below (at most a queue's worth: it runs once, holding the
	// queue), so twice the queue and 10 more must drop at least 10.
	ticks <- time.Time{}
	ticks <- time.Time{}
	const pushes = 2*mix.DefaultQueueSize + 10
	for range pushes {
		p.RTP.Timestamp += 960
		s.push(p)
	}
	st := s.eng.Stats()
	if queued := st.Received - 101; queued+st.QueueDrops != pushes || queued < mix.DefaultQueueSize || st.QueueDrops < 10 {
		t.Errorf("of %d pushes, %d queued and %d dropped on a full queue; want every push counted, at least a queue's worth (%d) queued, at least 10 dropped",
			pushes, queued, st.QueueDrops, mix.DefaultQueueSize)
	}
}

// BenchmarkMixerPacket is what the mixer adds to a packet's path: for a
// track nobody needs mixed (every packet of a conversation without a mix),
// and for a mixed speaker (a copy into the session's queue).
func BenchmarkMixerPacket(b *testing.B) {
	m, track := env(b)
	p := mixPacket(b, m, track)
	b.Run("not-mixed", func(b *testing.B) {
		proc := mixerProc{}
		b.ReportAllocs()
		for b.Loop() {
			proc.HandlePacket(p)
		}
	})
	b.Run("mixed", func(b *testing.B) {
		s, ticks := testSession(b, m)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			p.RTP.Timestamp += 960
			s.push(p)
			if i++; i%64 == 0 {
				b.StopTimer()
				ticks <- time.Time{}
				b.StartTimer()
			}
		}
	})
}
