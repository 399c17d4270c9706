package rtc

import (
	"errors"
	"fmt"

	"github.com/pion/webrtc/v3"
)

// NegotiatedDataChannel makes, on a connection the client offers, a data
// channel that both ends agreed on out of band (negotiated: the same label
// and SCTP stream id on both sides, no DCEP open message, RFC 8832): the
// way Arbiter's clients offer their "chat" (id 100) and "features" (id 110)
// channels. Call it before Answer, once per channel; the channel opens
// (OnOpen) once the connection's SCTP association is up, which needs an
// application m-line in the offer. An offer without one simply never opens
// the channel.
//
// Messages arrive on the channel's OnMessage, on a goroutine of pion's that
// ends when the peer closes; pion reads at most 64 KiB per message. Sending
// queues in SCTP: a sender that cannot trust its receiver to keep up checks
// BufferedAmount first.
func (p *Peer) NegotiatedDataChannel(label string, id uint16) (*webrtc.DataChannel, error) {
	if p.isClosing() {
		return nil, ErrClosed
	}
	if p.pc.RemoteDescription() != nil {
		return nil, errors.New("rtc: negotiated data channels are made before the offer is applied")
	}
	negotiated := true
	dc, err := p.pc.CreateDataChannel(label, &webrtc.DataChannelInit{Negotiated: &negotiated, ID: &id})
	if err != nil {
		return nil, fmt.Errorf("data channel %q (id %d): %w", label, id, err)
	}
	return dc, nil
}
