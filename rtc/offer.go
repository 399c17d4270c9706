package rtc

import (
	"fmt"
	"strings"

	"github.com/pion/sdp/v3"

	"github.com/beepvoice/router/rtc/codec"
)

// offer is what the router needs to know of a client's offer.
type offer struct {
	// receiving holds the mids of the m-lines the router will send on: the
	// audio ones, and for a video peer the video ones, on which the client
	// receives (sendrecv or recvonly), in order.
	receiving []string
}

// parseOffer validates an SDP offer: it must parse, have at most maxLines
// m-lines of any kind (each one a transceiver, and possibly a published
// track, for pion) and at most maxDown receiving m-lines. Without video it
// must carry at least one audio m-line that offers Opus; with video, at
// least one m-line of either kind that offers a codec the router forwards.
func parseOffer(text string, maxDown, maxLines int, video bool) (offer, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(text); err != nil {
		return offer{}, fmt.Errorf("%w: not valid SDP: %v", ErrBadOffer, err)
	}
	if n := len(sd.MediaDescriptions); n > maxLines {
		return offer{}, fmt.Errorf("%w: %d m-lines, at most %d", ErrBadOffer, n, maxLines)
	}
	var o offer
	audio, opus, usable := 0, 0, 0
	for _, md := range sd.MediaDescriptions {
		kind := md.MediaName.Media
		if kind != "audio" && (kind != "video" || !video) {
			continue
		}
		if kind == "audio" {
			audio++
		}
		if md.MediaName.Port.Value == 0 || !offersCodec(md, kind) {
			continue
		}
		if kind == "audio" {
			opus++
		}
		usable++
		mid, _ := md.Attribute("mid")
		if mid == "" {
			return offer{}, fmt.Errorf("%w: %s m-line %d has no mid", ErrBadOffer, kind, usable)
		}
		switch direction(md) {
		case "sendrecv", "recvonly":
			o.receiving = append(o.receiving, mid)
		}
	}
	switch {
	case !video && audio == 0:
		return offer{}, fmt.Errorf("%w: no audio m-line", ErrBadOffer)
	case !video && opus == 0:
		return offer{}, fmt.Errorf("%w: audio does not offer Opus at 48 kHz", ErrBadOffer)
	case video && usable == 0:
		return offer{}, fmt.Errorf("%w: no m-line offers Opus, VP8, H264, VP9 or AV1", ErrBadOffer)
	case len(o.receiving) > maxDown && !video:
		return offer{}, fmt.Errorf("%w: %d receiving audio m-lines, at most %d", ErrBadOffer, len(o.receiving), maxDown)
	case len(o.receiving) > maxDown:
		return offer{}, fmt.Errorf("%w: %d receiving m-lines, at most %d", ErrBadOffer, len(o.receiving), maxDown)
	}
	return o, nil
}

// offersCodec reports whether md offers a codec the router forwards: Opus
// for audio; for video VP8, H264, VP9 or AV1.
func offersCodec(md *sdp.MediaDescription, kind string) bool {
	if kind == "audio" {
		return offersOpus(md)
	}
	for _, a := range md.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		if _, c, ok := strings.Cut(a.Value, " "); ok {
			name, _, _ := strings.Cut(c, "/")
			if codec.Supported("video/" + name) {
				return true
			}
		}
	}
	return false
}

func offersOpus(md *sdp.MediaDescription) bool {
	for _, a := range md.Attributes {
		if a.Key != "rtpmap" {
			continue
		}
		if _, codec, ok := strings.Cut(a.Value, " "); ok && strings.HasPrefix(strings.ToLower(codec), "opus/48000") {
			return true
		}
	}
	return false
}

// direction returns the m-line's direction attribute; sendrecv when absent.
func direction(md *sdp.MediaDescription) string {
	for _, a := range md.Attributes {
		switch a.Key {
		case "sendrecv", "sendonly", "recvonly", "inactive":
			return a.Key
		}
	}
	return "sendrecv"
}

// candidateLine is how a remote ICE candidate starts in SDP.
const candidateLine = "a=candidate:"

// filterCandidates returns sdpText without the a=candidate lines admit
// refuses, and how many it dropped. The other lines are kept byte for byte.
func filterCandidates(sdpText string, admit func(candidate string) error) (string, int) {
	if !strings.Contains(sdpText, candidateLine) {
		return sdpText, 0
	}
	lines := strings.SplitAfter(sdpText, "\n")
	kept := lines[:0]
	dropped := 0
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, candidateLine); ok && admit(strings.TrimRight(v, "\r\n")) != nil {
			dropped++
			continue
		}
		kept = append(kept, l)
	}
	if dropped == 0 {
		return sdpText, 0
	}
	return strings.Join(kept, ""), dropped
}
