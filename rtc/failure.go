package rtc

import (
	"fmt"

	"github.com/pion/webrtc/v3"
)

// failureWhy says, for the log, why a peer is failing: whether ICE ever
// found a working candidate pair, or whether the connection was up and the
// client went silent.
func (p *Peer) failureWhy() string {
	select {
	case <-p.connected:
		return "the client went silent past the ICE timeouts (consent lost)"
	default:
	}
	p.mu.Lock()
	remoteSet, remote := p.remoteSet, len(p.candidates)
	p.mu.Unlock()
	switch {
	case !remoteSet:
		return "no offer was applied"
	case p.pc.ICEConnectionState() == webrtc.ICEConnectionStateConnected || p.pc.ICEConnectionState() == webrtc.ICEConnectionStateCompleted:
		return "ICE connected but the DTLS handshake did not complete"
	case remote == 0:
		return "no candidate pair: the client gave no usable ICE candidate (none, all in forbidden networks, or only mDNS names)"
	}
	return fmt.Sprintf("no candidate pair: no connectivity check succeeded with the client's %d candidates", remote)
}

// logFailure logs, once and at info, why a peer that has not been closed
// otherwise failed.
func (p *Peer) logFailure() {
	if p.isClosing() {
		return
	}
	p.log.Info("peer connection failed", "why", p.failureWhy(), "ice_state", p.pc.ICEConnectionState().String())
}
