package pipeline

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// recorder is a stage that records what it sees, and may stop packets or
// emit a bite per packet.
type recorder struct {
	name    string
	log     *[]string
	stop    bool
	emitOne bool
	closed  bool
}

func (r *recorder) Open(t *room.Track, emit Emit) (Processor, error) {
	return &recProc{r: r, emit: emit}, nil
}
func (r *recorder) Close(context.Context) error { r.closed = true; return nil }

type recProc struct {
	r    *recorder
	emit Emit
}

func (p *recProc) HandlePacket(pk *Packet) bool {
	*p.r.log = append(*p.r.log, p.r.name+":pkt")
	if p.r.emitOne {
		p.emit(&Bite{Conversation: "x"})
	}
	return !p.r.stop
}
func (p *recProc) HandleBite(*Bite) { *p.r.log = append(*p.r.log, p.r.name+":bite") }
func (p *recProc) Close()           { *p.r.log = append(*p.r.log, p.r.name+":close") }

func packet(t *testing.T, level byte, withLevel bool) []byte {
	t.Helper()
	p := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: 7, Timestamp: 960, SSRC: 1}, Payload: []byte{0xf8, 0xff, 0xfe}}
	if withLevel {
		if err := p.SetExtension(3, []byte{level | 0x80}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestChainOrderStopAndBites(t *testing.T) {
	var log []string
	a := &recorder{name: "a", log: &log, emitOne: true}
	b := &recorder{name: "b", log: &log, stop: true}
	c := &recorder{name: "c", log: &log}
	p := New(map[string]Stage{"a": a, "b": b, "c": c}, "a", "b", "c")
	tr := room.NewTrack(nil, rtc.NewUpTrack(claim.Claim{UserID: "u", ClientID: "d"}, 1, 3))
	sink, err := p.Open(tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.WriteRTP(packet(t, 30, true), time.Now()); err != nil {
		t.Fatal(err)
	}
	sink.Close()
	if err := p.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	// a's bite reaches b and c, not a; b stops the packet before c.
	want := "a:pkt b:bite c:bite b:pkt a:close b:close c:close"
	if got := strings.Join(log, " "); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	if !a.closed || !c.closed {
		t.Fatal("stages not closed")
	}
	if err := sink.WriteRTP([]byte{1, 2}, time.Now()); err == nil {
		t.Fatal("malformed RTP accepted")
	}
}

func TestChainAudioLevel(t *testing.T) {
	tests := []struct {
		name      string
		extID     uint8
		raw       []byte
		wantLevel uint8
		hasLevel  bool
		loud      bool
	}{
		{"level 30", 3, packet(t, 30, true), 30, true, true},
		{"silence", 3, packet(t, 127, true), 127, true, false},
		{"not negotiated", 0, packet(t, 30, true), 0, false, true},
		{"absent", 3, packet(t, 0, false), 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Packet
			st := stageFunc(func(p *Packet) { got = *p })
			pl := New(map[string]Stage{"s": st}, "s")
			sink, _ := pl.Open(room.NewTrack(nil, rtc.NewUpTrack(claim.Claim{UserID: "u", ClientID: "d"}, 1, tt.extID)))
			if err := sink.WriteRTP(tt.raw, time.Now()); err != nil {
				t.Fatal(err)
			}
			if got.HasLevel != tt.hasLevel || got.Level != tt.wantLevel || got.Loud(-50) != tt.loud {
				t.Fatalf("level %d has %v loud %v", got.Level, got.HasLevel, got.Loud(-50))
			}
		})
	}
}

type stageFunc func(p *Packet)

func (f stageFunc) Open(*room.Track, Emit) (Processor, error) { return procFunc(f), nil }
func (f stageFunc) Close(context.Context) error               { return nil }

type procFunc func(p *Packet)

func (f procFunc) HandlePacket(p *Packet) bool { f(p); return true }
func (procFunc) HandleBite(*Bite)              {}
func (procFunc) Close()                        {}

type testSettings struct {
	Size  int      `yaml:"size"`
	Every Duration `yaml:"every"`
}

func testRegistry() *Registry {
	r := NewRegistry()
	r.Register(Define("thing", "a test stage", testSettings{Size: 1, Every: Duration(time.Second)},
		func(env Env, name string, s *testSettings) (Stage, error) {
			if s.Size < 0 {
				return nil, errNegative
			}
			return stageFunc(func(*Packet) {}), nil
		}))
	return r
}

var errNegative = errorString("size must not be negative")

type errorString string

func (e errorString) Error() string { return string(e) }

func TestConfig(t *testing.T) {
	tests := []struct {
		name, yaml, wantErr string
	}{
		{"ok", "stages:\n  - name: thing\n    settings: {size: 3, every: 250ms}\n", ""},
		{"kind and name", "stages:\n  - name: a\n    kind: thing\n  - name: b\n    kind: thing\n", ""},
		{"empty", "", "empty"},
		{"no stages", "stages: []\n", "no stages"},
		{"unknown top-level key", "stagez: []\n", "stagez"},
		{"no name", "stages:\n  - kind: thing\n", "no name"},
		{"duplicate", "stages:\n  - name: thing\n  - name: thing\n", "twice"},
		{"unknown kind", "stages:\n  - name: nope\n", "unknown kind"},
		{"unknown setting", "stages:\n  - name: thing\n    settings: {colour: red}\n", "colour"},
		{"bad duration", "stages:\n  - name: thing\n    settings: {every: soon}\n", "soon"},
		{"rejected by the stage", "stages:\n  - name: thing\n    settings: {size: -1}\n", "negative"},
		{"not yaml", "stages: [\n", "pipeline config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig(strings.NewReader(tt.yaml))
			if err == nil {
				_, err = testRegistry().Build(c, Env{})
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDefaultsRoundTrip(t *testing.T) {
	r := testRegistry()
	c, err := r.Config("thing")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "every: 1s") {
		t.Fatalf("defaults not written out:\n%s", b)
	}
	c2, err := ParseConfig(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Build(c2, Env{}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Config("nope"); err == nil {
		t.Fatal("unknown kind accepted")
	}
}
