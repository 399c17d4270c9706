//go:build opus

package main

/*
#cgo pkg-config: opus
#include <opus.h>

static int decode(OpusDecoder *d, const unsigned char *data, int len, opus_int16 *pcm, int frames) {
	return opus_decode(d, data, len, pcm, frames, 0);
}
*/
import "C"

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unsafe"

	"github.com/beepvoice/router/oggopus"
)

// haveOpus reports that this build decodes with libopus.
const haveOpus = true

// maxFrame is the most samples one Opus packet holds at decodeRate (120 ms).
const maxFrame = decodeRate * 120 / 1000

// decodeOggOpus decodes an Ogg Opus stream to 16 kHz mono 16-bit PCM,
// dropping the stream's pre-skip and trimming to its final granule position.
func decodeOggOpus(data []byte) ([]int16, error) {
	r, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read ogg opus: %w", err)
	}
	var cerr C.int
	dec := C.opus_decoder_create(decodeRate, 1, &cerr)
	if cerr != C.OPUS_OK || dec == nil {
		return nil, fmt.Errorf("opus_decoder_create: %s", C.GoString(C.opus_strerror(cerr)))
	}
	defer C.opus_decoder_destroy(dec)

	pcm := make([]int16, 0, decodeRate*5)
	frame := make([]int16, maxFrame)
	var lastGranule uint64
	for {
		pkt, granule, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read ogg opus: %w", err)
		}
		if granule != ^uint64(0) {
			lastGranule = granule
		}
		if len(pkt) == 0 {
			continue
		}
		n := C.decode(dec, (*C.uchar)(unsafe.Pointer(&pkt[0])), C.int(len(pkt)),
			(*C.opus_int16)(unsafe.Pointer(&frame[0])), C.int(maxFrame))
		if n < 0 {
			return nil, fmt.Errorf("opus_decode: %s", C.GoString(C.opus_strerror(n)))
		}
		pcm = append(pcm, frame[:n]...)
	}
	// Granule positions and pre-skip count 48 kHz samples.
	skip := int(r.Head.PreSkip) * decodeRate / oggopus.SampleRate
	if lastGranule > 0 {
		end := int(lastGranule * decodeRate / oggopus.SampleRate)
		if end < len(pcm) {
			pcm = pcm[:end]
		}
	}
	if skip >= len(pcm) {
		return nil, nil
	}
	return pcm[skip:], nil
}
