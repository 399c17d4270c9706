// Package oggopus muxes Opus packets into Ogg Opus streams (RFC 7845 on top of
// the Ogg container of RFC 3533) and reads them back.
//
// We do not use pion's oggwriter: its first audio page has a wrong granule
// position (opusdec refuses it) and it never sets end-of-stream on an io.Writer.
//
// A Writer puts the identification header and the comment header on pages of
// their own, then packs audio packets into pages of about one second. Each
// audio page carries the granule position RFC 7845 asks for: the number of
// 48 kHz samples, pre-skip included, up to the end of the last packet
// completed on that page. Close marks the last page end-of-stream.
//
// Writer.WriteRTP keeps a stream in real time when the sender stops sending
// (Opus DTX) or packets are lost, by filling the gap with silent 20 ms frames.
//
// A Reader checks page CRCs, sequence numbers and the two headers and returns
// the packets in order; it is meant for tests and for consumers of the streams
// a Writer makes, not as a general Ogg demuxer (it reads one logical stream
// and no chained streams).
package oggopus
