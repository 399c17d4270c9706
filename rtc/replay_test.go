package rtc

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/pion/dtls/v2"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/internal/testutil"
)

// TestPacketCacheFirstWins: a sequence number the cache holds keeps its
// first packet; a later one of the same slot replaces it.
func TestPacketCacheFirstWins(t *testing.T) {
	pkt := func(seq uint16, b byte) []byte {
		return []byte{0x80, 111, byte(seq >> 8), byte(seq), 0, 0, 0, 0, 0, 0, 0, 1, b}
	}
	c := newPacketCache(64)
	for _, tc := range []struct {
		name string
		raw  []byte
		kept bool
	}{
		{"first", pkt(3, 'a'), true},
		{"same number, other bytes", pkt(3, 'b'), false},
		{"same number, same bytes", pkt(3, 'a'), false},
		{"next", pkt(4, 'c'), true},
		{"same slot, later number", pkt(3+64, 'd'), true},
		{"the old number again, once forgotten", pkt(3, 'e'), true},
		{"too short", []byte{0x80, 111, 0, 9}, false},
	} {
		if got := c.put(tc.raw); got != tc.kept {
			t.Errorf("%s: put reported %v, want %v", tc.name, got, tc.kept)
		}
	}
	if got, ok := c.get(4, nil); !ok || !bytes.Equal(got, pkt(4, 'c')) {
		t.Errorf("get(4) = %x, %v", got, ok)
	}
	if got, ok := c.get(3, nil); !ok || !bytes.Equal(got, pkt(3, 'e')) {
		t.Errorf("get(3) = %x, %v", got, ok)
	}
}

// recordSink records the sequence numbers and payloads written to it.
type recordSink struct{ pkts chan *rtp.Packet }

func (s recordSink) WriteRTP(raw []byte, _ time.Time) error {
	p := &rtp.Packet{}
	if err := p.Unmarshal(bytes.Clone(raw)); err != nil {
		return err
	}
	s.pkts <- p
	return nil
}
func (recordSink) Close() {}

type recordHandler struct {
	nopHandler
	sink recordSink
	ups  chan *UpTrack
}

func (h recordHandler) Published(t *UpTrack) (TrackSink, error) {
	h.ups <- t
	return h.sink, nil
}

// opusPublisher connects a pion client that publishes one Opus track, and
// offers only profiles if any, to a new peer of e whose handler is h. It
// returns the client's track and the peer.
func opusPublisher(t *testing.T, e *Engine, h Handler, profiles ...dtls.SRTPProtectionProfile) (*webrtc.TrackLocalStaticRTP, *Peer) {
	t.Helper()
	client := loopbackClient(t, profiles...)
	tr, err := webrtc.NewTrackLocalStaticRTP(webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}, "a", "s")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddTransceiverFromTrack(tr, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendonly}); err != nil {
		t.Fatal(err)
	}
	return tr, connectClient(t, e, client, h)
}

// untilTrack calls send until h is told of the published track, which the
// first packet to arrive makes, and returns the track.
func untilTrack(ctx context.Context, t *testing.T, h recordHandler, send func()) *UpTrack {
	t.Helper()
	for {
		send()
		select {
		case up := <-h.ups:
			return up
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no track")
			return nil
		}
	}
}

// TestReplayedSequenceNumberDropped: a publisher that sends a second,
// different packet under a sequence number it already sent (SRTP lets it
// through: a jump of half the number space moves the rollover counter, so
// the SRTP index differs) gets it dropped and counted; the first stays
// what the track forwards and caches, which NACK answers re-encrypt under
// the SRTP index they were first sent with.
func TestReplayedSequenceNumberDropped(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	h := recordHandler{sink: recordSink{pkts: make(chan *rtp.Packet, 16)}, ups: make(chan *UpTrack, 1)}
	tr, p := opusPublisher(t, e, h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	send := func(seq uint16, payload byte) {
		t.Helper()
		pkt := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: seq, Timestamp: uint32(seq) * 960}, Payload: []byte{0xf8, payload}}
		if err := tr.WriteRTP(pkt); err != nil {
			t.Fatal(err)
		}
	}
	next := func() *rtp.Packet {
		t.Helper()
		select {
		case pkt := <-h.sink.pkts:
			return pkt
		case <-ctx.Done():
			t.Fatal("a packet did not reach the track's sink")
			return nil
		}
	}
	up := untilTrack(ctx, t, h, func() { send(3, 'a') })
	if got := next(); got.SequenceNumber != 3 || got.Payload[1] != 'a' {
		t.Fatalf("first packet: seq %d payload %q", got.SequenceNumber, got.Payload)
	}
	// Steps under half the number space, which SRTP's rollover guess
	// follows, to past the middle; from there, 3 is taken for the next
	// rollover (SRTP index 65539): not a replay for SRTP.
	send(16000, 'b')
	send(32772, 'c')
	send(3, 'x')
	send(4, 'd') // index 65540: SRTP's replay window is past 32773 now
	for _, want := range []struct {
		seq     uint16
		payload byte
	}{{16000, 'b'}, {32772, 'c'}, {4, 'd'}} {
		got := next()
		if got.SequenceNumber != want.seq || got.Payload[1] != want.payload {
			t.Fatalf("got seq %d payload %q, want seq %d payload %q (the second packet of seq 3 was forwarded)", got.SequenceNumber, got.Payload, want.seq, want.payload)
		}
	}
	if raw, ok := up.cache.get(3, nil); !ok || raw[len(raw)-1] != 'a' {
		t.Errorf("the cache holds %x for seq 3, want the first packet", raw)
	}
	p.Close()
	// The track's reader counts its duplicates as it ends, after the
	// peer's Done.
	testutil.Eventually(t, 10*time.Second, "one duplicate counted", func() bool { return e.Stats().Duplicates == 1 })
	if got := e.Stats().Duplicates; got != 1 {
		t.Errorf("%d duplicates counted, want 1", got)
	}
}
