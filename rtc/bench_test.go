package rtc

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/pion/interceptor"
	"github.com/pion/rtp"
	"github.com/pion/srtp/v3"
	"github.com/pion/webrtc/v3"
	"golang.org/x/net/ipv4"

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

// BenchmarkDirectRoom measures the direct path of a room: pubs publishers
// and subs subscribers who each hear every publisher, so that each
// subscriber's peer has pubs down-tracks and keys of its own. A packet of
// each publisher in turn is fanned out (Fanout) to its down-track in every
// subscriber's peer: rewritten, encrypted with the peer's keys
// (AEAD_AES_256_GCM, what sessions with pion clients negotiate) and queued
// on one shared socket, sent with one sendmmsg per fan-out as on the
// UDP_PORT path. "discard" hands the batches to a writer that drops them,
// so ns/copy is the router's own work per copy; "loopback" sends them to
// a loopback socket that another goroutine drains, so ns/copy includes
// the kernel's (about the same for every build: compare the first).
// "aescm" is the same with AES_CM_128_HMAC_SHA1_80, what Chromium sessions
// negotiate: each down-track then keeps a pion context.
func BenchmarkDirectRoom(b *testing.B) {
	const pubs = 10
	gcm, cm := srtp.ProtectionProfileAeadAes256Gcm, srtp.ProtectionProfileAes128CmHmacSha1_80
	for _, bc := range []struct {
		name     string
		subs     int
		loopback bool
		profile  srtp.ProtectionProfile
	}{
		{"discard/10x50", 50, false, gcm}, {"discard/10x100", 100, false, gcm}, {"loopback/10x100", 100, true, gcm},
		{"aescm/discard/10x100", 100, false, cm},
	} {
		b.Run(bc.name, func(b *testing.B) {
			send, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			recv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { send.Close() })
			drain(b, recv)
			to := recv.LocalAddr().(*net.UDPAddr).AddrPort()
			var batch batchWriter = discardBatch{}
			if bc.loopback {
				batch = ipv4.NewPacketConn(send)
			}
			ups := make([]*UpTrack, pubs)
			for j := range ups {
				ups[j] = NewUpTrack(claim.Claim{UserID: "pub" + strconv.Itoa(j), ClientID: "p"}, uint32(j+1), 1)
			}
			downs := make([][]*DownTrack, pubs)
			for i := range bc.subs {
				keyLen, _ := bc.profile.KeyLen()
				saltLen, _ := bc.profile.SaltLen()
				keys := srtpKeys{key: make([]byte, keyLen), salt: make([]byte, saltLen), profile: bc.profile}
				keys.key[0], keys.key[1], keys.salt[0] = byte(i), byte(i>>8), 9
				e := testEgress(keys, send, to)
				e.batch, e.addr = batch, net.UDPAddrFromAddrPort(to)
				p := &Peer{Claim: claim.Claim{UserID: "sub" + strconv.Itoa(i), ClientID: "d"}}
				p.egress.Store(e)
				for j := range pubs {
					d := newDownTrack(p, webrtc.RTPCodecTypeAudio, j)
					if _, err := d.Bind(boundContext{ssrc: webrtc.SSRC(1000*i + j)}); err != nil {
						b.Fatal(err)
					}
					d.SetSource(ups[j])
					downs[j] = append(downs[j], d)
				}
			}
			pkts := make([]rtp.Packet, pubs)
			for j := range pkts {
				pkts[j] = rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: 111, SSRC: uint32(j + 1)}, Payload: make([]byte, 100)}
			}
			now := time.Now().UnixNano()
			forward := func() {
				now += int64(20 * time.Millisecond)
				for j, up := range ups {
					p := &pkts[j]
					p.SequenceNumber++
					p.Timestamp += 960
					if w, _, err := Fanout(downs[j], up.SendBuffer(), up, p, 0x8a, true, now); err != nil || w != uint64(bc.subs) {
						b.Fatalf("%d of %d copies written: %v", w, bc.subs, err)
					}
				}
			}
			forward() // the first packets make the buffers and SRTP state
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				forward()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pubs*bc.subs), "ns/copy")
		})
	}
}

// discardBatch is a batch writer that drops what it is given.
type discardBatch struct{}

func (discardBatch) WriteBatch(ms []ipv4.Message, _ int) (int, error) { return len(ms), nil }
