package oggopus

import (
	"errors"
	"testing"
)

// toc builds a TOC byte (RFC 6716 section 3.1).
func toc(config, stereo, code byte) byte { return config<<3 | stereo<<2 | code }

func TestPacketDuration(t *testing.T) {
	tests := []struct {
		name string
		p    []byte
		want int // samples at 48 kHz; 0 means an error is expected
	}{
		{"SILK NB 10ms", []byte{toc(0, 0, 0)}, 480},
		{"SILK NB 20ms", []byte{toc(1, 0, 0)}, 960},
		{"SILK MB 40ms", []byte{toc(6, 0, 0)}, 1920},
		{"SILK WB 60ms", []byte{toc(11, 1, 0)}, 2880},
		{"hybrid SWB 10ms", []byte{toc(12, 0, 0)}, 480},
		{"hybrid SWB 20ms", []byte{toc(13, 0, 0)}, 960},
		{"hybrid FB 10ms", []byte{toc(14, 1, 0)}, 480},
		{"hybrid FB 20ms", []byte{toc(15, 0, 0)}, 960},
		{"CELT NB 2.5ms", []byte{toc(16, 0, 0)}, 120},
		{"CELT WB 5ms", []byte{toc(21, 0, 0)}, 240},
		{"CELT SWB 10ms", []byte{toc(26, 0, 0)}, 480},
		{"CELT FB 20ms", []byte{toc(31, 1, 0)}, 960},
		{"silent frame", SilentFrame, 960},
		{"code 1 CELT 20ms", []byte{toc(31, 0, 1), 1, 2}, 1920},
		{"code 1 SILK 60ms", []byte{toc(3, 0, 1)}, 5760},
		{"code 2 SILK 20ms", []byte{toc(1, 0, 2), 1, 1, 2}, 1920},
		{"code 2 hybrid 10ms", []byte{toc(12, 0, 2)}, 960},
		{"code 3 one frame", []byte{toc(31, 0, 3), 1}, 960},
		{"code 3 three CELT 20ms", []byte{toc(31, 0, 3), 3}, 2880},
		{"code 3 VBR and padding bits", []byte{toc(31, 0, 3), 0xc3, 0}, 2880},
		{"code 3 48 CELT 2.5ms (120ms)", []byte{toc(16, 0, 3), 48}, 5760},
		{"code 3 two SILK 60ms (120ms)", []byte{toc(11, 0, 3), 2}, 5760},
		{"code 3 six CELT 20ms (120ms)", []byte{toc(31, 0, 3), 6}, 5760},
		{"empty", nil, 0},
		{"code 3 without count byte", []byte{toc(31, 0, 3)}, 0},
		{"code 3 with 0 frames", []byte{toc(31, 0, 3), 0}, 0},
		{"code 3 with 0 frames and flags", []byte{toc(31, 0, 3), 0xc0}, 0},
		{"code 3 seven CELT 20ms (140ms)", []byte{toc(31, 0, 3), 7}, 0},
		{"code 3 three SILK 60ms (180ms)", []byte{toc(11, 0, 3), 3}, 0},
		{"code 3 63 CELT 2.5ms", []byte{toc(19, 0, 3), 63}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PacketDuration(tt.p)
			if tt.want == 0 {
				if !errors.Is(err, ErrInvalidPacket) {
					t.Fatalf("PacketDuration(% x) = %d, %v; want ErrInvalidPacket", tt.p, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("PacketDuration(% x) = %d, %v; want %d", tt.p, got, err, tt.want)
			}
		})
	}
}

func FuzzPacketDuration(f *testing.F) {
	f.Add([]byte{})
	f.Add(SilentFrame)
	f.Add([]byte{toc(31, 0, 3), 6})
	f.Add([]byte{toc(11, 0, 3), 3})
	f.Fuzz(func(t *testing.T, p []byte) {
		n, err := PacketDuration(p)
		if err != nil {
			if n != 0 || !errors.Is(err, ErrInvalidPacket) {
				t.Fatalf("PacketDuration(% x) = %d, %v", p, n, err)
			}
			return
		}
		if n < 120 || n > 5760 || n%120 != 0 {
			t.Fatalf("PacketDuration(% x) = %d: not a multiple of 2.5 ms in [2.5, 120] ms", p, n)
		}
	})
}
