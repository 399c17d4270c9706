package stages

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/pion/rtp"

	"github.com/beepvoice/router/oggopus"
	"github.com/beepvoice/router/pipeline"
)

// FuzzPipelineConfig feeds arbitrary pipeline files through parsing and
// building with the built-in stages: errors are fine, panics are not.
func FuzzPipelineConfig(f *testing.F) {
	reg := pipeline.NewRegistry()
	Register(reg)
	def, _ := reg.Config(Default...)
	b, _ := def.Marshal()
	f.Add(string(b))
	f.Add("stages:\n  - name: bite-chunker\n    settings: {format: rtp, silence: 1ms}\n")
	f.Add("stages:\n  - name: forwarder\n    settings: {hangover: -1s}\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := pipeline.ParseConfig(strings.NewReader(s))
		if err != nil {
			return
		}
		// No NATS: a nats-sink stage must refuse to build, not panic.
		p, err := reg.Build(c, pipeline.Env{})
		if err == nil {
			_ = p.Close(context.Background())
		}
	})
}

// chunkerRecord is the size of one packet in FuzzChunker's input: sequence
// number (2 bytes), timestamp step (4, signed), arrival step (2, in 100 µs
// units), TOC byte, and flags (payload size 1-64, quiet, outside any
// conversation).
const chunkerRecord = 10

func chunkerInput(pkts ...[chunkerRecord]byte) []byte {
	var b []byte
	for _, p := range pkts {
		b = append(b, p[:]...)
	}
	return b
}

func chunkerPkt(seq uint16, tsStep int32, arrival time.Duration, toc, flags byte) (r [chunkerRecord]byte) {
	binary.BigEndian.PutUint16(r[0:], seq)
	binary.BigEndian.PutUint32(r[2:], uint32(tsStep))
	binary.BigEndian.PutUint16(r[6:], uint16(arrival/(100*time.Microsecond)))
	r[8], r[9] = toc, flags
	return r
}

// FuzzChunker drives the bite chunker with a fuzzed packet sequence and
// checks what it must keep whatever a publisher sends: no panic, no bite
// claiming more audio than the arrival time it spans plus the jitter
// allowance, at most biteBurst + maxBiteRate bites per second of arrival
// time, at most packetBurst + maxPacketRate packets per second taken, and
// every Ogg Opus bite a valid stream.
func FuzzChunker(f *testing.F) {
	const ms = time.Millisecond
	f.Add(false, chunkerInput(chunkerPkt(0, 0, 0, 0xf8, 2), chunkerPkt(1, 960, 20*ms, 0xf8, 2), chunkerPkt(2, 960, 20*ms, 0xf8, 2)))
	f.Add(false, chunkerInput(chunkerPkt(0, 0, 0, 0x19, 2), chunkerPkt(1, 1, 20*ms, 0x19, 2), chunkerPkt(2, 1, 0, 0x19, 2), chunkerPkt(3, -1<<30, 20*ms, 0xf8, 2)))
	f.Add(false, chunkerInput(chunkerPkt(0, 0, 0, 0xf8, 2), chunkerPkt(1, 1<<30, 0, 0xf8, 0x82), chunkerPkt(2, 960, 600*ms, 0xfb, 0x43), chunkerPkt(9, 960, 0, 0xf8, 0x02)))
	f.Add(true, chunkerInput(chunkerPkt(0, 0, 0, 0x19, 2), chunkerPkt(1, 960, 0, 0x19, 2), chunkerPkt(2, 960, 0, 0x19, 2)))
	m, track := env(f)
	conv := m.Conversation("conv-1")
	f.Fuzz(func(t *testing.T, rtpFormat bool, in []byte) {
		s := *chunkerKind.Defaults().(*ChunkerSettings)
		if rtpFormat {
			s.Format = pipeline.FormatRTP
		}
		ch, err := NewChunker(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		at := time.Unix(1_700_000_000, 0)
		first := at
		var claimed time.Duration
		bites := 0
		proc, err := ch.Open(track, func(b *pipeline.Bite) {
			bites++
			claimed += b.Duration
			// at is the latest arrival: every packet of b arrived by then.
			if limit := at.Sub(b.Start) + biteJitter; b.Duration > limit || b.Duration < 0 {
				t.Fatalf("bite %d claims %v, its arrival span allows %v", b.Seq, b.Duration, limit)
			}
			if b.Format != pipeline.FormatOggOpus {
				return
			}
			r, err := oggopus.NewReader(bytes.NewReader(b.Data))
			for err == nil {
				_, _, err = r.Next()
			}
			if !errors.Is(err, io.EOF) {
				t.Fatalf("bite %d is not valid Ogg Opus: %v", b.Seq, err)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		var ts uint32
		payload := make([]byte, 64)
		for i := range payload {
			payload[i] = byte(i)
		}
		n := 0
		for ; len(in) >= chunkerRecord; in = in[chunkerRecord:] {
			n++
			ts += binary.BigEndian.Uint32(in[2:])
			at = at.Add(time.Duration(binary.BigEndian.Uint16(in[6:])) * 100 * time.Microsecond)
			flags := in[9]
			payload[0] = in[8]
			p := pipeline.Packet{Track: track, Conversation: conv, Arrival: at, HasLevel: true, Level: 10}
			if flags&0x80 != 0 {
				p.Level = 127
			}
			if flags&0x40 != 0 {
				p.Conversation = nil
			}
			p.RTP.Header = rtp.Header{Version: 2, PayloadType: 111, SequenceNumber: binary.BigEndian.Uint16(in), Timestamp: ts, SSRC: 42}
			p.RTP.Payload = payload[:1+int(flags&0x3f)]
			p.Raw = p.RTP.Payload
			proc.HandlePacket(&p)
		}
		proc.Close()
		span := at.Sub(first)
		st := ch.Stats()
		if taken := uint64(n) - st["drop_rate"]; taken > uint64(packetBurst+maxPacketRate*span/time.Second) {
			t.Fatalf("%d packets taken in %v", taken, span)
		}
		if rtpFormat {
			if claimed > span+biteJitter {
				t.Fatalf("rtp bites claim %v in %v", claimed, span)
			}
			return
		}
		if limit := biteBurst + int(maxBiteRate*span/time.Second); bites > limit {
			t.Fatalf("%d bites in %v, want at most %d", bites, span, limit)
		}
	})
}
