package rtc

import (
	"errors"
	"fmt"
	"time"

	"github.com/pion/webrtc/v3"
)

// AddSendRecvTrack adds, to a connection the router offers, an m-line of
// kind on which the router sends a down-track and the client may send back
// (sendrecv): the callee's leg of a 1:1 call, whose one connection both
// receives the caller and publishes. A track the client sends on it reaches
// the Handler's Published as on an answered offer. Call it before Offer;
// video needs a video peer.
func (p *Peer) AddSendRecvTrack(kind webrtc.RTPCodecType) (*DownTrack, error) {
	if kind == webrtc.RTPCodecTypeVideo && !p.opts.Video {
		return nil, errors.New("rtc: video down-track on a peer without video")
	}
	if p.pc.LocalDescription() != nil {
		return nil, errors.New("rtc: down-tracks are added before the offer")
	}
	d := newDownTrack(p, kind, len(p.downs))
	tr, err := p.pc.AddTransceiverFromTrack(d, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionSendrecv})
	if err != nil {
		return nil, fmt.Errorf("add %s send-receive track: %w", kind, err)
	}
	d.sender = tr.Sender()
	p.downs = append(p.downs, d)
	return d, nil
}

// ResetConnectTimeout restarts the peer's connect timeout: the peer closes
// (ErrConnectTimeout) unless it has connected within d from now; d ≤ 0
// means the Engine's ConnectTimeout. A front-end whose offer waits for a
// person (a ringing call) holds the timeout off with it, then restarts it
// once the answer came. It does nothing to a peer that is connected or
// closed.
func (p *Peer) ResetConnectTimeout(d time.Duration) {
	if p.deadline == nil {
		return
	}
	if d <= 0 {
		d = p.e.cfg.ConnectTimeout
	}
	select {
	case <-p.connected:
		return
	case <-p.done:
		return
	default:
	}
	p.deadline.Reset(d) // the timer's function checks connected again
}
