package session

import (
	"strconv"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// discard is a bound slot's writer that drops what it is given, so that the
// benchmarks measure the router's forwarding work, not pion's SRTP.
type discard struct{}

func (discard) WriteRTP(*rtp.Header, []byte) (int, error) { return 0, nil }
func (discard) Write(b []byte) (int, error)               { return len(b), nil }

// boundContext is what pion passes to Bind.
type boundContext struct{ ssrc webrtc.SSRC }

func (c boundContext) CodecParameters() []webrtc.RTPCodecParameters {
	return []webrtc.RTPCodecParameters{Opus}
}
func (c boundContext) HeaderExtensions() []webrtc.RTPHeaderExtensionParameter {
	return []webrtc.RTPHeaderExtensionParameter{{URI: "urn:ietf:params:rtp-hdrext:ssrc-audio-level", ID: 1}}
}
func (c boundContext) SSRC() webrtc.SSRC                    { return c.ssrc }
func (c boundContext) WriteStream() webrtc.TrackLocalWriter { return discard{} }
func (c boundContext) ID() string                           { return "bench" }
func (c boundContext) RTCPReader() interceptor.RTCPReader   { return nil }

// fanout builds a conversation with one speaker and n receiving devices of
// other users, each with one bound slot, and returns the speaker's track.
func fanout(b *testing.B, n int) (*Conversation, *Track) {
	b.Helper()
	c := newConversation("bench")
	speaker := &User{ID: "speaker", peers: map[string]*Peer{}}
	speaker.conv.Store(c)
	t := NewTrack(speaker, claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	var peers []*Peer
	for i := 0; i < n; i++ {
		u := &User{ID: "u" + strconv.Itoa(i), peers: map[string]*Peer{}}
		u.conv.Store(c)
		p := &Peer{Claim: claim.Claim{UserID: u.ID, ClientID: "d"}, user: u}
		s := newSlot(p, 0)
		if _, err := s.Bind(boundContext{ssrc: webrtc.SSRC(1000 + i)}); err != nil {
			b.Fatal(err)
		}
		p.slots = []*Slot{s}
		peers = append(peers, p)
		c.members[u] = struct{}{}
	}
	c.members[speaker] = struct{}{}
	c.peers = peers
	c.tracks = []*Track{t}
	c.reassignLocked(time.Now().UnixNano())
	if got := len(t.Targets(c)); got != n {
		b.Fatalf("speaker has %d targets, want %d", got, n)
	}
	return c, t
}

// BenchmarkFanout measures forwarding one packet to n slots: the slot
// lookup, sequence/timestamp rewriting and header extension remapping,
// without pion's SRTP and socket write.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			c, t := fanout(b, n)
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1}, Payload: make([]byte, 80)}
			b.ReportAllocs()
			b.ResetTimer()
			now := time.Now().UnixNano()
			for i := 0; i < b.N; i++ {
				p.SequenceNumber++
				p.Timestamp += 960
				for _, s := range t.Targets(c) {
					if _, err := s.Write(t.SendBuffer(), t, c, p, 0x8a, true, now); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/slot")
		})
	}
}

// BenchmarkSpeakerSwitch measures a slot switching between two speakers on
// every packet (the worst case of rewriting).
func BenchmarkSpeakerSwitch(b *testing.B) {
	c, t1 := fanout(b, 1)
	s := t1.Targets(c)[0]
	u2 := &User{ID: "second", peers: map[string]*Peer{}}
	u2.conv.Store(c)
	t2 := NewTrack(u2, claim.Claim{UserID: "second", ClientID: "x"}, 2, 1)
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111}, Payload: make([]byte, 80)}
	b.ReportAllocs()
	now := time.Now().UnixNano()
	for i := 0; i < b.N; i++ {
		src := t1
		if i%2 == 1 {
			src = t2
		}
		s.setSource(src)
		p.SequenceNumber++
		p.Timestamp += 960
		now += int64(20 * time.Millisecond)
		if ok, err := s.Write(src.SendBuffer(), src, c, p, 0x8a, true, now); !ok || err != nil {
			b.Fatal("not written", err)
		}
	}
}
