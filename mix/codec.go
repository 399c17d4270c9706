package mix

import (
	"fmt"

	"github.com/thesyncim/gopus"
)

// Audio format of the mixer: 48 kHz mono, 20 ms frames.
const (
	// SampleRate is the mixer's sample rate and the RTP clock of Opus.
	SampleRate = 48000
	// FrameSamples is the number of samples in one 20 ms frame.
	FrameSamples = SampleRate / 50
	// maxPacket is the largest Opus payload kept (RFC 6716 allows 1275
	// bytes per frame; a 20 ms packet has one or two frames).
	maxPacket = 1500
)

// The codec is gopus, a pure-Go Opus: measured against libopus in
// codec_libopus_test.go (figures in docs/performance.md, "Mixer codec").

// newDecoder returns a mono 48 kHz Opus decoder.
func newDecoder() (*gopus.Decoder, error) {
	cfg := gopus.DefaultDecoderConfig(SampleRate, 1)
	d, err := gopus.NewDecoder(cfg)
	if err != nil {
		return nil, fmt.Errorf("mix: opus decoder: %w", err)
	}
	return d, nil
}

// newEncoder returns a mono 48 kHz VoIP Opus encoder for mixes: 20 ms
// frames, the given bitrate, in-band FEC on (tuned for lossPercent
// expected loss) and DTX off, so that the mixed stream is continuous.
func newEncoder(bitrate, lossPercent int) (*gopus.Encoder, error) {
	e, err := gopus.NewEncoder(gopus.EncoderConfig{SampleRate: SampleRate, Channels: 1, Application: gopus.ApplicationVoIP})
	if err != nil {
		return nil, fmt.Errorf("mix: opus encoder: %w", err)
	}
	if err := configureEncoder(e, bitrate, lossPercent); err != nil {
		return nil, err
	}
	return e, nil
}

func configureEncoder(e *gopus.Encoder, bitrate, lossPercent int) error {
	if err := e.SetFrameSize(FrameSamples); err != nil {
		return fmt.Errorf("mix: opus frame size: %w", err)
	}
	if err := e.SetBitrate(bitrate); err != nil {
		return fmt.Errorf("mix: opus bitrate %d: %w", bitrate, err)
	}
	if err := e.SetPacketLoss(lossPercent); err != nil {
		return fmt.Errorf("mix: opus packet loss %d%%: %w", lossPercent, err)
	}
	e.SetFEC(true)
	e.SetDTX(false)
	return nil
}
