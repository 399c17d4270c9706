//go:build opus

package libopus

/*
#cgo pkg-config: opus
#include <opus.h>

static int dec_float(OpusDecoder *d, const unsigned char *data, int len, float *pcm, int frames, int fec) {
	return opus_decode_float(d, data, len, pcm, frames, fec);
}
static int enc_float(OpusEncoder *e, const float *pcm, int frames, unsigned char *out, int max) {
	return opus_encode_float(e, pcm, frames, out, max);
}
static int enc_set(OpusEncoder *e, int bitrate, int fec, int loss, int dtx) {
	int r;
	if ((r = opus_encoder_ctl(e, OPUS_SET_BITRATE(bitrate))) != OPUS_OK) return r;
	if ((r = opus_encoder_ctl(e, OPUS_SET_INBAND_FEC(fec))) != OPUS_OK) return r;
	if ((r = opus_encoder_ctl(e, OPUS_SET_PACKET_LOSS_PERC(loss))) != OPUS_OK) return r;
	return opus_encoder_ctl(e, OPUS_SET_DTX(dtx));
}
static int enc_lookahead(OpusEncoder *e) {
	opus_int32 v = 0;
	opus_encoder_ctl(e, OPUS_GET_LOOKAHEAD(&v));
	return v;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// Version is libopus's version string.
func Version() string { return C.GoString(C.opus_get_version_string()) }

func opusErr(op string, code C.int) error {
	return fmt.Errorf("libopus: %s: %s", op, C.GoString(C.opus_strerror(code)))
}

// Decoder is a mono 48 kHz libopus decoder.
type Decoder struct{ d *C.OpusDecoder }

// NewDecoder creates a mono 48 kHz decoder; Close frees it.
func NewDecoder() (*Decoder, error) {
	var e C.int
	d := C.opus_decoder_create(48000, 1, &e)
	if e != C.OPUS_OK || d == nil {
		return nil, opusErr("opus_decoder_create", e)
	}
	return &Decoder{d: d}, nil
}

// Decode decodes pkt into pcm (len(pcm) samples at most; PLC for the
// length of pcm when pkt is empty) and returns the number of samples.
func (d *Decoder) Decode(pkt []byte, pcm []float32) (int, error) {
	return d.decode(pkt, pcm, 0)
}

// DecodeFEC decodes the in-band FEC data of pkt (the frame before it)
// into pcm, or conceals it when pkt carries none.
func (d *Decoder) DecodeFEC(pkt []byte, pcm []float32) (int, error) {
	return d.decode(pkt, pcm, 1)
}

func (d *Decoder) decode(pkt []byte, pcm []float32, fec C.int) (int, error) {
	if len(pcm) == 0 {
		return 0, errors.New("libopus: empty pcm buffer")
	}
	var p *C.uchar
	if len(pkt) > 0 {
		p = (*C.uchar)(unsafe.Pointer(&pkt[0]))
	}
	n := C.dec_float(d.d, p, C.int(len(pkt)), (*C.float)(unsafe.Pointer(&pcm[0])), C.int(len(pcm)), fec)
	if n < 0 {
		return 0, opusErr("opus_decode_float", n)
	}
	return int(n), nil
}

// Close frees the decoder.
func (d *Decoder) Close() { C.opus_decoder_destroy(d.d) }

// Encoder is a mono 48 kHz VoIP libopus encoder.
type Encoder struct{ e *C.OpusEncoder }

// NewEncoder creates a mono 48 kHz VoIP encoder at bitrate bits per second
// with in-band FEC on (expecting lossPercent loss) and DTX off.
func NewEncoder(bitrate, lossPercent int) (*Encoder, error) {
	var e C.int
	enc := C.opus_encoder_create(48000, 1, C.OPUS_APPLICATION_VOIP, &e)
	if e != C.OPUS_OK || enc == nil {
		return nil, opusErr("opus_encoder_create", e)
	}
	if r := C.enc_set(enc, C.int(bitrate), 1, C.int(lossPercent), 0); r != C.OPUS_OK {
		C.opus_encoder_destroy(enc)
		return nil, opusErr("opus_encoder_ctl", r)
	}
	return &Encoder{e: enc}, nil
}

// Lookahead is the encoder's delay in samples.
func (e *Encoder) Lookahead() int { return int(C.enc_lookahead(e.e)) }

// Encode encodes one frame of pcm into out and returns the packet length.
func (e *Encoder) Encode(pcm []float32, out []byte) (int, error) {
	n := C.enc_float(e.e, (*C.float)(unsafe.Pointer(&pcm[0])), C.int(len(pcm)),
		(*C.uchar)(unsafe.Pointer(&out[0])), C.int(len(out)))
	if n < 0 {
		return 0, opusErr("opus_encode_float", n)
	}
	return int(n), nil
}

// Close frees the encoder.
func (e *Encoder) Close() { C.opus_encoder_destroy(e.e) }
