package rtc

import (
	"strconv"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc/codec"
)

// discard is a bound slot's writer that drops what it is given, so that the
// benchmarks measure the router's forwarding work, not pion's SRTP.
type discard struct{}

func (discard) WriteRTP(*rtp.Header, []byte) (int, error) { return 0, nil }
func (discard) Write(b []byte) (int, error)               { return len(b), nil }

// boundContext is what pion passes to Bind.
type boundContext struct{ ssrc webrtc.SSRC }

func (c boundContext) CodecParameters() []webrtc.RTPCodecParameters {
	return []webrtc.RTPCodecParameters{codec.Opus}
}
func (c boundContext) HeaderExtensions() []webrtc.RTPHeaderExtensionParameter {
	return []webrtc.RTPHeaderExtensionParameter{{URI: "urn:ietf:params:rtp-hdrext:ssrc-audio-level", ID: 1}}
}
func (c boundContext) SSRC() webrtc.SSRC                    { return c.ssrc }
func (c boundContext) WriteStream() webrtc.TrackLocalWriter { return discard{} }
func (c boundContext) ID() string                           { return "bench" }
func (c boundContext) RTCPReader() interceptor.RTCPReader   { return nil }

// fanout returns an up-track that is the source of n bound down-tracks,
// each of its own peer.
func fanout(b *testing.B, n int) (*UpTrack, []*DownTrack) {
	b.Helper()
	t := NewUpTrack(claim.Claim{UserID: "speaker", ClientID: "s"}, 1, 1)
	downs := make([]*DownTrack, n)
	for i := range downs {
		p := &Peer{Claim: claim.Claim{UserID: "u" + strconv.Itoa(i), ClientID: "d"}}
		d := newDownTrack(p, webrtc.RTPCodecTypeAudio, 0)
		if _, err := d.Bind(boundContext{ssrc: webrtc.SSRC(1000 + i)}); err != nil {
			b.Fatal(err)
		}
		d.SetSource(t)
		downs[i] = d
	}
	return t, downs
}

// BenchmarkFanout measures forwarding one packet to n down-tracks:
// sequence/timestamp rewriting and header extension remapping, without
// pion's SRTP and socket write.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			t, downs := fanout(b, n)
			p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: 1}, Payload: make([]byte, 80)}
			b.ReportAllocs()
			b.ResetTimer()
			now := time.Now().UnixNano()
			for i := 0; i < b.N; i++ {
				p.SequenceNumber++
				p.Timestamp += 960
				for _, d := range downs {
					if _, err := d.Write(t.SendBuffer(), t, p, 0x8a, true, now); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/slot")
		})
	}
}

// BenchmarkSpeakerSwitch measures a down-track switching between two
// sources on every packet (the worst case of rewriting).
func BenchmarkSpeakerSwitch(b *testing.B) {
	t1, downs := fanout(b, 1)
	d := downs[0]
	t2 := NewUpTrack(claim.Claim{UserID: "second", ClientID: "x"}, 2, 1)
	p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111}, Payload: make([]byte, 80)}
	b.ReportAllocs()
	now := time.Now().UnixNano()
	for i := 0; i < b.N; i++ {
		src := t1
		if i%2 == 1 {
			src = t2
		}
		d.SetSource(src)
		p.SequenceNumber++
		p.Timestamp += 960
		now += int64(20 * time.Millisecond)
		if ok, err := d.Write(src.SendBuffer(), src, p, 0x8a, true, now); !ok || err != nil {
			b.Fatal("not written", err)
		}
	}
}

// videoContext is what pion passes to Bind for a VP8 down-track.
type videoContext struct{ boundContext }

func (videoContext) CodecParameters() []webrtc.RTPCodecParameters {
	return []webrtc.RTPCodecParameters{codec.VP8}
}
func (videoContext) HeaderExtensions() []webrtc.RTPHeaderExtensionParameter { return nil }

// BenchmarkVideoFanout measures forwarding one 1,200-byte VP8 packet to n
// video down-tracks: "rewrite" without SRTP and the send (as
// BenchmarkFanout), "direct" with each down-track's own SRTP context and a
// sendmmsg of all copies to a loopback socket, as on the UDP_PORT path.
func BenchmarkVideoFanout(b *testing.B) {
	for _, direct := range []bool{false, true} {
		for _, n := range []int{1, 10, 100} {
			name := "rewrite/"
			if direct {
				name = "direct/"
			}
			b.Run(name+strconv.Itoa(n), func(b *testing.B) {
				src := newUpTrack(claim.Claim{UserID: "pub", ClientID: "cam"}, 1, webrtc.RTPCodecTypeVideo, codec.VP8.RTPCodecCapability, 0)
				downs := make([]*DownTrack, n)
				var e *egress
				if direct {
					e = loopbackEgress(b)
				}
				for i := range downs {
					p := &Peer{Claim: claim.Claim{UserID: "u" + strconv.Itoa(i), ClientID: "d"}}
					if e != nil {
						p.egress.Store(e)
					}
					d := newDownTrack(p, webrtc.RTPCodecTypeVideo, 0)
					if _, err := d.Bind(videoContext{boundContext{ssrc: webrtc.SSRC(1000 + i)}}); err != nil {
						b.Fatal(err)
					}
					d.SetSource(src)
					downs[i] = d
				}
				// A VP8 keyframe's first packet: descriptor with S set,
				// then a key frame header (P clear, start code).
				payload := make([]byte, 1200-12)
				copy(payload, []byte{0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a})
				p := &rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 96, SSRC: 1}, Payload: payload}
				buf := src.SendBuffer()
				b.ReportAllocs()
				b.SetBytes(int64(n * 1200))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					p.SequenceNumber++
					if i%4 == 0 {
						p.Timestamp += 3000
					}
					for _, d := range downs {
						if ok, err := d.Write(buf, src, p, 0, false, 0); !ok || err != nil {
							b.Fatal("not written: ", err)
						}
					}
					if _, err := buf.Flush(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/down-track")
			})
		}
	}
}
