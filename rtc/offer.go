package rtc

import (
	"fmt"
	"strings"

	"github.com/pion/sdp/v3"
)

// offer is what the router needs to know of a client's offer.
type offer struct {
	// receiving holds the mids of the audio m-lines on which the client
	// receives (sendrecv or recvonly), in order.
	receiving []string
}

// parseOffer validates an SDP offer: it must parse, carry at least one
// audio m-line that offers Opus, and at most maxSlots receiving ones.
func parseOffer(text string, maxSlots int) (offer, error) {
	var sd sdp.SessionDescription
	if err := sd.UnmarshalString(text); err != nil {
		return offer{}, fmt.Errorf("%w: not valid SDP: %v", ErrBadOffer, err)
	}
	var o offer
	audio, opus := 0, 0
	for _, md := range sd.MediaDescriptions {
		if md.MediaName.Media != "audio" {
			continue
		}
		audio++
		if md.MediaName.Port.Value == 0 || !offersOpus(md) {
			continue
		}
		opus++
		mid, _ := md.Attribute("mid")
		if mid == "" {
			return offer{}, fmt.Errorf("%w: audio m-line %d has no mid", ErrBadOffer, audio)
		}
		switch direction(md) {
		case "sendrecv", "recvonly":
			o.receiving = append(o.receiving, mid)
		}
	}
	switch {
	case audio == 0:
		return offer{}, fmt.Errorf("%w: no audio m-line", ErrBadOffer)
	case opus == 0:
		return offer{}, fmt.Errorf("%w: audio does not offer Opus at 48 kHz", ErrBadOffer)
	case len(o.receiving) > maxSlots:
		return offer{}, fmt.Errorf("%w: %d receiving audio m-lines, at most %d", ErrBadOffer, len(o.receiving), maxSlots)
	}
	return o, nil
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
