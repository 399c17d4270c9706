// Package mix is the audio mixing engine of the mixing stage (issue 17):
// it turns the Opus streams of a conversation's active speakers into the
// few distinct Opus mixes its listeners need, for devices that receive on
// fewer audio slots than there are speakers.
//
// A Mixer serves one conversation. Each speaker's Opus RTP payloads, with
// their RTP timestamps and arrival times, are pushed into a bounded queue
// (Push; a full queue drops and counts). One goroutine per conversation
// (Run, for the lifetime of its context) then, every 20 ms:
//
//   - moves the queued packets into a small jitter buffer per speaker,
//     aligned by RTP timestamp: a speaker's first packet is played Jitter
//     (default 40 ms) after it arrived, the following ones by their
//     timestamps; late packets are dropped and counted, and a speaker whose
//     packets keep coming late or far early is re-anchored;
//   - decodes one 20 ms frame per speaker, concealing a missing packet
//     with the next packet's in-band FEC when it is already there, else
//     with the decoder's PLC (never waiting); a speaker silent for longer
//     than Hangover leaves the mix;
//   - sums the speakers at 48 kHz and encodes each distinct mix once: one
//     shared mix of every speaker for all the listeners who are not
//     speaking, and one mix-minus per speaker, which leaves that speaker's
//     own voice out; or, once SetMixes names them, exactly the mixes a
//     policy needs, each the sum without the speakers it names. So the
//     cost grows with the number of speakers, never with the number of
//     listeners;
//   - passes every mix through its own soft limiter (no clipping, and no
//     pumping with two equal speakers), measures its RFC 6464 audio level
//     and encodes it as Opus (20 ms frames, in-band FEC on, DTX off, a
//     bitrate setting) for the Output callback.
//
// The codec is gopus (github.com/thesyncim/gopus), a pure-Go Opus, chosen
// over libopus through cgo on measured figures (docs/performance.md,
// "Mixer codec"; codec_libopus_test.go measures both with -tags opus): its
// decoder matches libopus's output to within rounding, its encoder is as
// good as libopus at 32 kb/s, at the same CPU, and the router keeps
// building without cgo.
//
// The stage kind mixer (package stages) binds the engine: the room's
// speaker policy (room/mixing.go) decides which devices hear which mix and
// asks for exactly those (SetMixes), each a local up-track whose packets
// the slots carry like a forwarded speaker's.
package mix
