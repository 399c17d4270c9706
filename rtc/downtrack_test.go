package rtc

import (
	"testing"
	"time"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"
	"go.uber.org/goleak"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/testutil"
)

// TestMarkSent checks the window of sequence numbers a down-track has sent.
func TestMarkSent(t *testing.T) {
	for _, tc := range []struct {
		name string
		seqs []uint16
		want []bool
	}{
		{"in order", []uint16{10, 11, 12}, []bool{true, true, true}},
		{"duplicate", []uint16{10, 11, 11, 10}, []bool{true, true, false, false}},
		{"late but new", []uint16{10, 12, 11, 11}, []bool{true, true, true, false}},
		{"across the wrap", []uint16{65535, 0, 65535, 1}, []bool{true, true, false, true}},
		{"older than the window", []uint16{100, 36, 37}, []bool{true, false, true}},
		{"jump clears the window", []uint16{10, 200, 10, 199}, []bool{true, true, false, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s DownTrack
			var u unwrapper
			for i, seq := range tc.seqs {
				ext := u.extend(seq)
				got := s.markSent(ext)
				if got != tc.want[i] {
					t.Fatalf("seq %d (#%d): %v, want %v", seq, i, got, tc.want[i])
				}
				if got && int64(ext-s.lastSeq) > 0 {
					s.lastSeq = ext
				}
			}
		})
	}
}

// TestUnwrapper checks extended sequence numbers: forward across wraps,
// late packets from before a wrap, and the first number's room below it.
func TestUnwrapper(t *testing.T) {
	for _, tc := range []struct {
		name string
		seqs []uint16
		want []uint64
	}{
		{"in order", []uint16{1, 2, 3}, []uint64{65537, 65538, 65539}},
		{"forward across the wrap", []uint16{65534, 65535, 0, 1}, []uint64{131070, 131071, 131072, 131073}},
		{"late from before the wrap", []uint16{65535, 1, 65534, 2}, []uint64{131071, 131073, 131070, 131074}},
		{"late before the first", []uint16{5, 3}, []uint64{65541, 65539}},
		{"twice round", []uint16{0, 30000, 60000, 24464, 54464, 18928}, []uint64{65536, 95536, 125536, 155536, 185536, 215536}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var u unwrapper
			for i, seq := range tc.seqs {
				if got := u.extend(seq); got != tc.want[i] {
					t.Fatalf("seq %d (#%d): %d, want %d", seq, i, got, tc.want[i])
				}
			}
		})
	}
}

// recorder is a bound down-track's writer that keeps the headers it is given.
type recorder struct{ hdrs []rtp.Header }

func (w *recorder) WriteRTP(h *rtp.Header, _ []byte) (int, error) {
	w.hdrs = append(w.hdrs, *h)
	return 0, nil
}
func (w *recorder) Write(b []byte) (int, error) { return len(b), nil }

// TestSwitchTimestamps checks the timestamps a down-track gives a new speaker:
// one 20 ms frame after the last packet at least, the wall-clock gap when
// longer, and never backwards, even when the new speaker's packet arrived
// before the last one written (readers of different tracks race).
func TestSwitchTimestamps(t *testing.T) {
	for _, tc := range []struct {
		name string
		gap  time.Duration // arrival of the new speaker's packet after the last one
		want uint32        // timestamp advance
	}{
		{"arrived earlier", -3 * time.Millisecond, 960},
		{"at once", 0, 960},
		{"within a frame", 10 * time.Millisecond, 960},
		{"after a pause", 500 * time.Millisecond, 24000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newDownTrack(&Peer{}, webrtc.RTPCodecTypeAudio, 0)
			if _, err := s.Bind(boundContext{ssrc: 7}); err != nil {
				t.Fatal(err)
			}
			w := &recorder{}
			s.writer = w
			a := NewUpTrack(claim.Claim{ClientID: "a"}, 1, 1)
			b := NewUpTrack(claim.Claim{ClientID: "b"}, 2, 1)
			now := time.Now().UnixNano()
			s.SetSource(a)
			pa := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: 100, Timestamp: 5000}, Payload: []byte{1}}
			if ok, err := s.Write(a.SendBuffer(), a, pa, 0, false, now); !ok || err != nil {
				t.Fatal(ok, err)
			}
			s.SetSource(b)
			pb := &rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: 9, Timestamp: 77}, Payload: []byte{1}}
			if ok, err := s.Write(b.SendBuffer(), b, pb, 0, false, now+int64(tc.gap)); !ok || err != nil {
				t.Fatal(ok, err)
			}
			h := w.hdrs[1]
			if d := h.Timestamp - w.hdrs[0].Timestamp; d != tc.want {
				t.Errorf("timestamp advanced by %d, want %d", d, tc.want)
			}
			if h.SequenceNumber != w.hdrs[0].SequenceNumber+1 || !h.Marker {
				t.Errorf("switch: seq %d after %d, marker %v", h.SequenceNumber, w.hdrs[0].SequenceNumber, h.Marker)
			}
		})
	}
}

// TestIdleDownTrackHasNoReader: a down-track reads its receiver's RTCP
// only once it has had a source, so a listener's idle slots cost no
// goroutine; Close ends the readers.
func TestIdleDownTrackHasNoReader(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c"}, nopHandler{}, PeerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := goleak.IgnoreCurrent()
	var downs []*DownTrack
	for range 3 {
		d, err := p.AddSendRecvTrack(webrtc.RTPCodecTypeAudio)
		if err != nil {
			t.Fatal(err)
		}
		downs = append(downs, d)
	}
	if err := goleak.Find(before); err != nil {
		t.Fatalf("down-tracks without a source started goroutines: %v", err)
	}
	src := NewUpTrack(claim.Claim{UserID: "v", ClientID: "d"}, 1, 1)
	downs[0].SetSource(src)
	downs[0].SetSource(nil)
	downs[0].SetSource(src)
	downs[1].SetSource(src)
	testutil.Eventually(t, 10*time.Second, "two RTCP readers after two down-tracks got a source", func() bool { return goroutinesIn("rtc.(*Peer).readFeedback") == 2 })
	p.Close()
	testutil.Eventually(t, 10*time.Second, "no RTCP reader after Close", func() bool { return goroutinesIn("rtc.(*Peer).readFeedback") == 0 })
	downs[2].SetSource(src) // closed: starts nothing
	if err := goleak.Find(before); err != nil {
		t.Errorf("a source set on a closed peer's down-track started a goroutine: %v", err)
	}
}
