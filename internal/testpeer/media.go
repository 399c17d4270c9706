package testpeer

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/webrtc/v3"
	"github.com/pion/webrtc/v3/pkg/media"

	"github.com/beepvoice/router/internal/testmedia"
)

// Silence is an Opus frame of 20 ms of silence.
var Silence = []byte{0xf8, 0xff, 0xfe}

// OpusCapability is what a client sends Opus as: 48 kHz, stereo.
var OpusCapability = webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2}

// VideoCapability is what a client sends video of mime as: H264 as the
// router negotiates it (constrained baseline, packetization mode 1).
func VideoCapability(mime string) webrtc.RTPCodecCapability {
	c := webrtc.RTPCodecCapability{MimeType: mime, ClockRate: 90000}
	if mime == webrtc.MimeTypeH264 {
		c.SDPFmtpLine = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
	}
	return c
}

// MediaConfig says what a Media sends.
type MediaConfig struct {
	// VideoMime is the video codec of Frames (default VP8).
	VideoMime string
	// Frames are the video frames, sent in order, looped. Required.
	Frames []testmedia.Frame
	// Opus are the audio frames of 20 ms, sent in order, looped (default:
	// Silence).
	Opus [][]byte
	// StreamID is the tracks' stream (their ids are "video" and "audio").
	StreamID string
	// AudioFirst orders the tracks audio then video, as a browser's
	// getUserMedia stream lists them; by default video comes first.
	AudioFirst bool
}

// Media is what a sending Peer sends: a video fixture at 30 frames a
// second and Opus every 20 ms, each looped, on two sample tracks. Like an
// encoder, it answers a keyframe request (PLI or FIR) by making its next
// frame a keyframe: it skips ahead to the fixture's next one.
type Media struct {
	// Video and Audio are the tracks.
	Video, Audio *webrtc.TrackLocalStaticSample

	frames []testmedia.Frame
	opus   [][]byte
	order  []*webrtc.TrackLocalStaticSample

	framesSent, audioSent atomic.Int64
	keyframe              chan struct{} // capacity 1: a keyframe is due

	mu      sync.Mutex
	keyReqs []time.Time // arrivals of the PLIs and FIRs received

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// NewMedia makes the tracks of c. Nothing is sent until Start.
func NewMedia(c MediaConfig) (*Media, error) {
	if len(c.Frames) == 0 {
		return nil, errors.New("testpeer: media without video frames")
	}
	if c.VideoMime == "" {
		c.VideoMime = webrtc.MimeTypeVP8
	}
	if len(c.Opus) == 0 {
		c.Opus = [][]byte{Silence}
	}
	m := &Media{frames: c.Frames, opus: c.Opus, keyframe: make(chan struct{}, 1), stop: make(chan struct{})}
	var err error
	if m.Video, err = webrtc.NewTrackLocalStaticSample(VideoCapability(c.VideoMime), "video", c.StreamID); err != nil {
		return nil, err
	}
	if m.Audio, err = webrtc.NewTrackLocalStaticSample(OpusCapability, "audio", c.StreamID); err != nil {
		return nil, err
	}
	m.order = []*webrtc.TrackLocalStaticSample{m.Video, m.Audio}
	if c.AudioFirst {
		m.order = []*webrtc.TrackLocalStaticSample{m.Audio, m.Video}
	}
	return m, nil
}

// addTo adds m's tracks to pc, in m's order, each on a new transceiver of
// direction dir or, when dir is zero, with AddTrack (onto the transceivers
// of a remote offer already applied), and reads their RTCP.
func (m *Media) addTo(pc *webrtc.PeerConnection, dir webrtc.RTPTransceiverDirection) error {
	for _, track := range m.order {
		var sender *webrtc.RTPSender
		if dir == 0 {
			s, err := pc.AddTrack(track)
			if err != nil {
				return err
			}
			sender = s
		} else {
			tr, err := pc.AddTransceiverFromTrack(track, webrtc.RTPTransceiverInit{Direction: dir})
			if err != nil {
				return err
			}
			sender = tr.Sender()
		}
		m.wg.Add(1)
		go m.readRTCP(sender)
	}
	return nil
}

// Start starts sending, once after is closed (nil: at once). Call it once.
func (m *Media) Start(after <-chan struct{}) {
	m.wg.Add(2)
	go m.sendVideo(after)
	go m.sendAudio(after)
}

// readRTCP reads a sender's RTCP, which drives pion's NACK responder, and
// notes the keyframe requests.
func (m *Media) readRTCP(s *webrtc.RTPSender) {
	defer m.wg.Done()
	for {
		pkts, _, err := s.ReadRTCP()
		if err != nil {
			return
		}
		now := time.Now()
		for _, p := range pkts {
			switch p.(type) {
			case *rtcp.PictureLossIndication, *rtcp.FullIntraRequest:
				m.mu.Lock()
				m.keyReqs = append(m.keyReqs, now)
				m.mu.Unlock()
				select {
				case m.keyframe <- struct{}{}:
				default:
				}
			}
		}
	}
}

// wait waits until after is closed (nil: not at all); false if m stopped
// first.
func (m *Media) wait(after <-chan struct{}) bool {
	if after == nil {
		return true
	}
	select {
	case <-after:
		return true
	case <-m.stop:
		return false
	}
}

func (m *Media) sendVideo(after <-chan struct{}) {
	defer m.wg.Done()
	if !m.wait(after) {
		return
	}
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	i := 0
	for {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		select {
		case <-m.keyframe:
			for !m.frames[i].Keyframe {
				i = (i + 1) % len(m.frames)
			}
		default:
		}
		f := m.frames[i]
		i = (i + 1) % len(m.frames)
		if err := m.Video.WriteSample(media.Sample{Data: f.Data, Duration: f.Duration}); err == nil {
			m.framesSent.Add(1)
		}
	}
}

func (m *Media) sendAudio(after <-chan struct{}) {
	defer m.wg.Done()
	if !m.wait(after) {
		return
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i = (i + 1) % len(m.opus) {
		select {
		case <-m.stop:
			return
		case <-tick.C:
		}
		if err := m.Audio.WriteSample(media.Sample{Data: m.opus[i], Duration: 20 * time.Millisecond}); err == nil {
			m.audioSent.Add(1)
		}
	}
}

// FramesSent is how many video frames were written so far.
func (m *Media) FramesSent() int64 { return m.framesSent.Load() }

// AudioSent is how many Opus frames were written so far.
func (m *Media) AudioSent() int64 { return m.audioSent.Load() }

// KeyRequests returns the arrival times of the keyframe requests so far.
func (m *Media) KeyRequests() []time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.keyReqs)
}

// KeyRequestsBetween counts the keyframe requests that arrived in [from, to].
func (m *Media) KeyRequestsBetween(from, to time.Time) int {
	n := 0
	for _, at := range m.KeyRequests() {
		if !at.Before(from) && !at.After(to) {
			n++
		}
	}
	return n
}

// close stops the senders and waits for them and the RTCP readers: the
// peer connection must be closed first, for the readers to end.
func (m *Media) close() {
	m.closeOnce.Do(func() {
		close(m.stop)
		m.wg.Wait()
	})
}
