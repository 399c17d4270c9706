package mix

import (
	"fmt"
	"slices"
	"time"

	"github.com/thesyncim/gopus"
)

// speaker is one contributor of a conversation: its jitter buffer, its
// decoder and the encoder of its mix-minus. Owned by Run's goroutine.
type speaker struct {
	id  string
	dec *gopus.Decoder
	out mixOut // its mix-minus

	ring   [ringFrames]slot
	extTS  int64  // last timestamp seen, unwrapped
	lastTS uint32 // last timestamp seen
	offset int64  // frame of a packet = (extTS + offset) / FrameSamples
	late   int    // late packets in a row
	misses int    // frames in a row without a packet
	heard  bool   // a packet was decoded since the speaker joined
	// arrival is when the packet decoded into pcm arrived (since
	// Config.Start), -1 when pcm was concealed or is silence.
	arrival time.Duration
	pcm     [FrameSamples]float32
}

// slot is one frame of a jitter buffer.
type slot struct {
	frame   int64 // -1 when empty
	arrival time.Duration
	n       int
	data    [maxPacket]byte
}

// buffer puts q into its speaker's jitter buffer, adding the speaker if
// it is new.
func (m *Mixer) buffer(q *queued) {
	s := m.speaker(q.speaker)
	if s == nil {
		s = m.join(q.speaker)
		if s == nil {
			m.stats.speakerDrops.Add(1)
			return
		}
		m.anchor(s, q)
	}
	s.extTS += int64(int32(q.ts - s.lastTS))
	s.lastTS = q.ts
	frame := floorDiv(s.extTS+s.offset, FrameSamples)
	switch {
	case frame < m.next:
		m.stats.lateDrops.Add(1)
		if s.late++; s.late < lateResync {
			return
		}
		m.stats.resyncs.Add(1)
		m.anchor(s, q)
	case frame >= m.next+ringFrames:
		m.stats.resyncs.Add(1)
		m.anchor(s, q)
	}
	frame = floorDiv(s.extTS+s.offset, FrameSamples)
	s.late = 0
	sl := &s.ring[frame%ringFrames]
	if sl.frame == frame {
		m.stats.duplicateDrops.Add(1)
		return
	}
	sl.frame, sl.arrival, sl.n = frame, q.arrival, copy(sl.data[:], q.data[:q.n])
}

// anchor aligns s so that q plays Jitter after its arrival, and empties
// its jitter buffer.
func (m *Mixer) anchor(s *speaker, q *queued) {
	play := max(int64(q.arrival/FrameDuration)+m.jitFrames, m.next)
	s.lastTS, s.extTS = q.ts, int64(q.ts)
	s.offset = play*FrameSamples - s.extTS
	s.late = 0
	for i := range s.ring {
		s.ring[i].frame = -1
	}
}

func (m *Mixer) speaker(id string) *speaker {
	for _, s := range m.speakers {
		if s.id == id {
			return s
		}
	}
	return nil
}

// join adds speaker id, reusing a left speaker's codecs when there is
// one; it returns nil when MaxSpeakers are mixing or the codecs fail.
func (m *Mixer) join(id string) *speaker {
	if len(m.speakers) == m.cfg.MaxSpeakers {
		return nil
	}
	var s *speaker
	if n := len(m.spare); n > 0 {
		s = m.spare[n-1]
		m.spare = m.spare[:n-1]
		s.dec.Reset()
		s.out.enc.Reset()
	} else {
		var err error
		if s, err = m.newSpeaker(); err != nil {
			m.stats.encodeErrors.Add(1)
			return nil
		}
	}
	s.id, s.misses, s.heard = id, 0, false
	s.out.lim.reset()
	m.speakers = append(m.speakers, s)
	m.stats.joins.Add(1)
	return s
}

func (m *Mixer) newSpeaker() (*speaker, error) {
	dec, err := newDecoder()
	if err != nil {
		return nil, err
	}
	enc, err := m.newEncoder()
	if err != nil {
		return nil, fmt.Errorf("mix-minus: %w", err)
	}
	return &speaker{dec: dec, out: mixOut{enc: enc}}, nil
}

// decode fills s.pcm with frame f: its packet, else the next packet's
// FEC, else PLC (for maxConceal frames), else silence. It reports whether
// s has been silent for its hangover with nothing buffered: then it leaves.
func (m *Mixer) decode(s *speaker, f int64) (gone bool) {
	pcm := s.pcm[:]
	sl := &s.ring[f%ringFrames]
	s.arrival = -1
	if sl.frame == f {
		sl.frame = -1
		if _, err := s.dec.Decode(sl.data[:sl.n], pcm); err == nil {
			s.misses, s.heard, s.arrival = 0, true, sl.arrival
			m.stats.decoded.Add(1)
			return false
		}
		m.stats.decodeErrors.Add(1)
	}
	s.misses++
	next := &s.ring[(f+1)%ringFrames]
	switch {
	case !s.heard || s.misses > maxConceal:
		clear(pcm)
	case next.frame == f+1:
		if _, err := s.dec.DecodeWithFEC(next.data[:next.n], pcm, true); err != nil {
			clear(pcm)
			m.stats.decodeErrors.Add(1)
		} else {
			m.stats.recovered.Add(1)
		}
	default:
		if _, err := s.dec.Decode(nil, pcm); err != nil {
			clear(pcm)
			m.stats.decodeErrors.Add(1)
		} else {
			m.stats.concealed.Add(1)
		}
	}
	if s.misses < m.hangover {
		return false
	}
	for i := range s.ring {
		if s.ring[i].frame >= f {
			return false
		}
	}
	return true
}

// mixFrame decodes, mixes and encodes frame f.
func (m *Mixer) mixFrame(f int64) {
	// Decode every speaker; those gone after their hangover leave.
	kept := m.speakers[:0]
	for _, s := range m.speakers {
		if m.decode(s, f) {
			m.spare = append(m.spare, s)
			m.stats.leaves.Add(1)
			continue
		}
		kept = append(kept, s)
	}
	clear(m.speakers[len(kept):])
	m.speakers = kept

	// Sum in float64: float32 samples within 2^29 of each other in
	// magnitude add exactly there, so the total minus one speaker is the
	// sum of the others (no trace of a speaker's own voice in its
	// mix-minus; any residue is far below 16-bit resolution).
	clear(m.sum[:])
	voices := 0
	for _, s := range m.speakers {
		if s.heard {
			voices++
		}
		for i, v := range s.pcm {
			m.sum[i] += float64(v)
		}
	}
	ts := uint32(f * FrameSamples)
	if m.custom {
		for _, x := range m.mixes {
			m.encodeWithout(x, ts, voices)
		}
		m.stats.frames.Add(1)
		return
	}
	for i, v := range m.sum {
		m.pcm[i] = float32(v)
	}
	m.encode(&m.shared, "", "", ts, voices, m.oldest(nil))
	for _, s := range m.speakers {
		for i, v := range m.sum {
			m.pcm[i] = float32(v - float64(s.pcm[i]))
		}
		n := voices
		if s.heard {
			n--
		}
		m.encode(&s.out, s.id, s.id, ts, n, m.oldest(s))
	}
	m.stats.frames.Add(1)
}

// oldest is the earliest arrival of the packets decoded into this frame
// by the speakers other than skip, -1 if none was.
func (m *Mixer) oldest(skip *speaker) time.Duration {
	arrival := time.Duration(-1)
	for _, s := range m.speakers {
		if s != skip && s.arrival >= 0 && (arrival < 0 || s.arrival < arrival) {
			arrival = s.arrival
		}
	}
	return arrival
}

// encodeWithout encodes one frame of the mix x of SetMixes: the sum
// without x's speakers.
func (m *Mixer) encodeWithout(x *setMix, ts uint32, voices int) {
	m.acc = m.sum
	arrival := time.Duration(-1)
	for _, s := range m.speakers {
		if !slices.Contains(x.Without, s.id) {
			if s.arrival >= 0 && (arrival < 0 || s.arrival < arrival) {
				arrival = s.arrival
			}
			continue
		}
		for i, v := range s.pcm {
			m.acc[i] -= float64(v)
		}
		if s.heard {
			voices--
		}
	}
	for i, v := range m.acc {
		m.pcm[i] = float32(v)
	}
	m.encode(x.out, "", x.Key, ts, voices, arrival)
}

// encode limits m.pcm and encodes it as one frame of the mix o.
func (m *Mixer) encode(o *mixOut, minus, key string, ts uint32, voices int, arrival time.Duration) {
	o.lim.process(m.pcm[:])
	level := audioLevel(m.pcm[:])
	n, err := o.enc.Encode(m.pcm[:], o.buf[:])
	if err != nil {
		m.stats.encodeErrors.Add(1)
		return
	}
	m.stats.encoded.Add(1)
	f := Frame{Minus: minus, Key: key, Timestamp: ts, Payload: o.buf[:n], Level: level, Voices: voices}
	if arrival >= 0 {
		f.Arrival = m.cfg.Start.Add(arrival)
	}
	m.cfg.Output(f)
}

// floorDiv is a/b rounded toward minus infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}
