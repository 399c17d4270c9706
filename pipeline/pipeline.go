package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/beepvoice/router/room"
	"github.com/beepvoice/router/rtc"
)

// Pipeline is an ordered list of stages. It implements room.Sink.
type Pipeline struct {
	stages []named
}

type named struct {
	name   string
	stage  Stage
	timing prometheus.Observer // nil without metrics
}

// New returns a Pipeline of the given stages, for tests and embedding; the
// router builds its pipeline from a Config with Registry.Build.
func New(stages map[string]Stage, order ...string) *Pipeline {
	p := &Pipeline{}
	for _, n := range order {
		p.stages = append(p.stages, named{name: n, stage: stages[n]})
	}
	return p
}

// Stats returns the counts of every stage that keeps them, by stage name.
func (p *Pipeline) Stats() map[string]map[string]uint64 {
	out := make(map[string]map[string]uint64)
	for _, s := range p.stages {
		if st, ok := s.stage.(Stats); ok {
			out[s.name] = st.Stats()
		}
	}
	return out
}

// Names returns the stage names in order.
func (p *Pipeline) Names() []string {
	names := make([]string, len(p.stages))
	for i, s := range p.stages {
		names[i] = s.name
	}
	return names
}

// Mixing returns the pipeline's mixing stage as the room's speaker policy
// sees it (room.Config.Mixing): its first stage that implements
// room.Mixing in a mode other than off, or nil.
func (p *Pipeline) Mixing() room.Mixing {
	for _, s := range p.stages {
		if m, ok := s.stage.(room.Mixing); ok && m.MixMode() != room.MixOff {
			return m
		}
	}
	return nil
}

// Open returns the chain of processors for one published track.
func (p *Pipeline) Open(t *room.Track) (rtc.TrackSink, error) {
	return open(t, p.stages)
}

// OpenRelayed returns the chain of processors for a track relayed from
// another router (room.Manager.AddRemoteTrack): only the stages that run on
// relayed tracks (Relayed: the gate, the forwarder). The others (bites,
// plugins) run on the router the publisher is connected to, so that what
// they make is made once in the cluster.
func (p *Pipeline) OpenRelayed(t *room.Track) (rtc.TrackSink, error) {
	var relayed []named
	for _, s := range p.stages {
		if r, ok := s.stage.(Relayed); ok && r.Relayed() {
			relayed = append(relayed, s)
		}
	}
	return open(t, relayed)
}

// open returns the chain of stages for t.
func open(t *room.Track, stages []named) (rtc.TrackSink, error) {
	c := &Chain{track: t, procs: make([]Processor, len(stages))}
	if len(stages) > 0 && stages[0].timing != nil {
		c.timing = make([]prometheus.Observer, len(stages))
		for i, s := range stages {
			c.timing[i] = s.timing
		}
	}
	c.pkt.Track = t
	for i, s := range stages {
		proc, err := s.stage.Open(t, c.emitter(i+1))
		if err != nil {
			for _, opened := range c.procs[:i] {
				opened.Close()
			}
			return nil, fmt.Errorf("stage %s: open track: %w", s.name, err)
		}
		c.procs[i] = proc
	}
	return c, nil
}

// Close closes the stages in order, so that what an earlier stage flushes
// still reaches the later ones. Call it after every track is closed.
func (p *Pipeline) Close(ctx context.Context) error {
	var errs []error
	for _, s := range p.stages {
		if err := s.stage.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stage %s: %w", s.name, err))
		}
	}
	return errors.Join(errs...)
}

func (p *Pipeline) closeStages() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Close(ctx)
}

// Chain runs one track's packets through its processors. It is used by one
// goroutine: the track's reader.
type Chain struct {
	track  *room.Track
	procs  []Processor
	pkt    Packet
	timing []prometheus.Observer // per stage; nil without metrics
	n      uint32                // packets seen, for sampling
}

// sampleEvery is how often a chain times its stages: on one packet in 1024.
const sampleEvery = 1024

// emitter returns the Emit that delivers bites to processors from index i on.
func (c *Chain) emitter(from int) Emit {
	return func(b *Bite) {
		for _, proc := range c.procs[from:] {
			proc.HandleBite(b)
		}
	}
}

// WriteRTP parses one received RTP packet and passes it through the
// processors. raw is only borrowed: it may be reused once WriteRTP returns.
func (c *Chain) WriteRTP(raw []byte, arrival time.Time) error {
	p := &c.pkt
	if err := p.RTP.Unmarshal(raw); err != nil {
		return fmt.Errorf("parse rtp: %w", err)
	}
	p.Raw = raw
	p.Arrival = arrival
	p.Conversation = nil
	p.HasLevel = false
	if id := c.track.LevelExtID; id != 0 {
		if ext := p.RTP.GetExtension(id); len(ext) > 0 {
			p.HasLevel = true
			p.Level = ext[0] & 0x7f
			p.Voice = ext[0]&0x80 != 0
		}
	}
	c.n++
	if c.timing != nil && c.n%sampleEvery == 0 {
		c.timed(p)
		return nil
	}
	for _, proc := range c.procs {
		if !proc.HandlePacket(p) {
			break
		}
	}
	return nil
}

// timed runs the processors like WriteRTP, observing each one's time.
func (c *Chain) timed(p *Packet) {
	for i, proc := range c.procs {
		start := time.Now()
		ok := proc.HandlePacket(p)
		c.timing[i].Observe(time.Since(start).Seconds())
		if !ok {
			return
		}
	}
}

// Close tells every processor that the track ended.
func (c *Chain) Close() {
	for _, proc := range c.procs {
		proc.Close()
	}
}
