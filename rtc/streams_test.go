package rtc

import (
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/transport/v2/packetio"
	"github.com/pion/webrtc/v3"
)

// connectSubscriber connects a loopback pion client that receives slots
// audio m-lines from a peer of e.
func connectSubscriber(t *testing.T, e *Engine, slots int) (*webrtc.PeerConnection, *Peer) {
	t.Helper()
	client := loopbackClient(t)
	for range slots {
		if _, err := client.AddTransceiverFromKind(webrtc.RTPCodecTypeAudio, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	return client, connectClient(t, e, client, nopHandler{})
}

// receiverReport returns a receiver report whose 31 blocks name random
// SSRCs.
func receiverReport(r *rand.Rand) rtcp.Packet {
	rr := &rtcp.ReceiverReport{SSRC: 1, Reports: make([]rtcp.ReceptionReport, 31)}
	for i := range rr.Reports {
		rr.Reports[i].SSRC = r.Uint32()
	}
	return rr
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestRTCPNamingUnknownSSRCs: a subscriber whose receiver reports name
// random SSRCs made pion keep a stream and a buffer for each until the
// peer closed (670 MiB of heap in 10 s). Its peer is now closed once its
// packets named more SSRCs than its m-lines allow, counted, and what it
// made is released; a client naming a few SSRCs of its own is left alone.
func TestRTCPNamingUnknownSSRCs(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	r := rand.New(rand.NewPCG(1, 2))

	// A client naming SSRCs of its own, well within the bound, goes on.
	client, p := connectSubscriber(t, e, 2)
	for range 20 {
		sd := &rtcp.SourceDescription{Chunks: []rtcp.SourceDescriptionChunk{{Source: r.Uint32(), Items: []rtcp.SourceDescriptionItem{{Type: rtcp.SDESCNAME, Text: "c"}}}}}
		if err := client.WriteRTCP([]rtcp.Packet{sd}); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the router made their streams, then check the peer.
	for deadline := time.Now().Add(10 * time.Second); p.streams.n.Load() < 20; {
		if time.Now().After(deadline) {
			t.Fatalf("the router made %d streams, want at least 20", p.streams.n.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-p.Done():
		t.Fatalf("a client naming 20 SSRCs of its own was closed: %v", p.Err())
	default:
	}
	p.Close()
	_ = client.Close()

	// The flood: 3,000 reports naming 93,000 SSRCs.
	before := heapInUse()
	client, p = connectSubscriber(t, e, 2)
	sent := 0
	for ; sent < 3000; sent++ {
		if err := client.WriteRTCP([]rtcp.Packet{receiverReport(r)}); err != nil {
			t.Logf("write %d: %v", sent, err)
			break // the router closed the connection
		}
		if sent%100 == 99 {
			runtime.Gosched()
		}
	}
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the peer is still open after %d reports naming %d unknown SSRCs", sent, 31*sent)
	}
	if !errors.Is(p.Err(), ErrStreamLimit) {
		t.Errorf("the peer closed with %v, want %v", p.Err(), ErrStreamLimit)
	}
	if got := e.Refusals().Streams; got != 1 {
		t.Errorf("%d peers refused for their streams, want 1", got)
	}
	_ = client.Close()
	// What the flood made is released with the peer: measured while the
	// client is gone, the heap is within a few MiB of where it started
	// (before the bound, 3,000 reports kept about 200 MiB).
	if after := heapInUse(); after > before+16<<20 {
		t.Errorf("heap in use grew from %d to %d KiB", before>>10, after>>10)
	}
}

// TestStreamGuard: the guard hands out the inner buffers up to its limit,
// then trips once and hands out buffers that keep nothing.
func TestStreamGuard(t *testing.T) {
	trips := 0
	g := &streamGuard{limit: 3, inner: bufferFactory(DefaultTrackBuffer, nil), trip: func() { trips++ }}
	for i := range 10 {
		b := g.buffer(packetio.RTCPBufferPacket, uint32(i))
		_, isDiscard := b.(nullBuffer)
		if isDiscard != (i >= 3) {
			t.Fatalf("buffer %d: discard %v", i, isDiscard)
		}
		if n, err := b.Write([]byte{1, 2, 3}); n != 3 || err != nil {
			t.Fatalf("buffer %d: write %d, %v", i, n, err)
		}
		if isDiscard {
			if _, err := b.Read(make([]byte, 10)); err != io.EOF {
				t.Fatalf("discard read: %v, want EOF", err)
			}
		}
	}
	if trips != 1 {
		t.Fatalf("tripped %d times, want 1", trips)
	}
}
