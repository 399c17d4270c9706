package rtc

import (
	"time"

	"github.com/pion/rtcp"
)

// Sender reports.
//
// pion's sender report interceptor sees only what goes through pion's write
// path, and reports every bound stream, even one that has sent nothing,
// with an RTP time made up from nothing. Slots report themselves instead:
// once a second, for the down-tracks that have sent, from the counters they keep
// anyway.

// reportInterval is how often down-tracks send sender reports: pion's default.
const reportInterval = time.Second

// report returns the sender report of the down-track at now, or false if it has
// sent nothing yet.
func (s *DownTrack) report(now time.Time) (rtcp.SenderReport, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.writer == nil {
		return rtcp.SenderReport{}, false
	}
	since := now.UnixNano() - s.lastAt
	return rtcp.SenderReport{
		SSRC:        s.ssrc,
		NTPTime:     ntpTime(now),
		RTPTime:     s.lastTS + uint32(uint64(max(since, 0))*uint64(s.clockRate)/1e9),
		PacketCount: uint32(s.written),
		OctetCount:  uint32(s.bytes),
	}, true
}

// sendReports sends the sender reports of the peer's down-tracks in one compound
// RTCP packet.
func (p *Peer) sendReports(now time.Time) {
	var pkts []rtcp.Packet
	for _, s := range p.downs {
		if sr, ok := s.report(now); ok {
			pkts = append(pkts, &sr)
		}
	}
	if len(pkts) == 0 {
		return
	}
	if err := p.pc.WriteRTCP(pkts); err != nil {
		p.log.Debug("sender reports not sent", "err", err)
	}
}

// ntpEpochOffset is the seconds from 1900 (NTP) to 1970 (Unix).
const ntpEpochOffset = 2208988800

// ntpTime is t as a 64-bit NTP timestamp (RFC 3550 section 4): seconds
// since 1900 in the high word, the fraction of a second in the low one.
func ntpTime(t time.Time) uint64 {
	ns := uint64(t.UnixNano())
	sec := ns/1e9 + ntpEpochOffset
	frac := (ns % 1e9) << 32 / 1e9
	return sec<<32 | frac
}
