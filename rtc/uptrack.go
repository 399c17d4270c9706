package rtc

import (
	"strconv"
	"time"

	"github.com/beepvoice/router/claim"
)

// UpTrack is one track a device publishes. Its fields are fixed when it
// starts.
type UpTrack struct {
	// ID is "<clientid>/<ssrc>", unique while the track lives.
	ID string
	// SSRC is the publisher's RTP SSRC.
	SSRC uint32
	// LevelExtID is the negotiated id of the RFC 6464 audio level header
	// extension, or 0 when the publisher does not send it.
	LevelExtID uint8
	// Started is when the first packet arrived.
	Started time.Time

	peer  *Peer // nil for a track not received over WebRTC
	owner claim.Claim

	// buf is the packet path's SendBuffer.
	buf SendBuffer
}

// NewUpTrack returns an up-track of device c that is not received over
// WebRTC: for tests, tools and relays that feed a pipeline directly.
func NewUpTrack(c claim.Claim, ssrc uint32, levelExtID uint8) *UpTrack {
	return &UpTrack{
		ID:         c.ClientID + "/" + strconv.FormatUint(uint64(ssrc), 10),
		SSRC:       ssrc,
		LevelExtID: levelExtID,
		Started:    time.Now(),
		owner:      c,
	}
}

// Claim returns the publishing device's identity.
func (t *UpTrack) Claim() claim.Claim { return t.owner }

// Peer returns the publisher's peer, or nil for a track not received over
// WebRTC.
func (t *UpTrack) Peer() *Peer { return t.peer }

// SendBuffer returns the buffer of the track's packet path: the goroutine
// that reads the track uses it to write to down-tracks.
func (t *UpTrack) SendBuffer() *SendBuffer { return &t.buf }
