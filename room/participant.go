package room

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc"
)

// The feed policy, for front-ends whose clients subscribe to each publisher
// on a connection of its own (SylkServer's video rooms, Arbiter): a
// Participant publishes on one connection it offers, and receives each
// other participant on a Feed, a connection the router offers, bound to
// that publisher's tracks for its whole life.

// Errors of participants and feeds.
var (
	// ErrParticipantExists is returned by Enter for an id already taken in
	// the conversation.
	ErrParticipantExists = errors.New("participant id already taken in this conversation")
	// ErrLeft is returned for a participant that has left.
	ErrLeft = errors.New("participant has left")
)

// Event tells a participant's front-end of a change in its conversation.
type Event struct {
	// Kind is what happened.
	Kind EventKind
	// Participant is whom it happened to. For a Message of a participant
	// of another router that publishes nothing (so is not in the
	// conversation here), it is a participant value that is not in the
	// conversation: only its Identity means anything.
	Participant *Participant
	// Data is a Message's content, as its sender's front-end wrote it.
	// It is shared: read it, do not keep or change it.
	Data []byte
}

// EventKind is what an Event says.
type EventKind int

// Event kinds.
const (
	// Published: the participant's media exists (its first track started);
	// feeds of it can be offered.
	Published EventKind = iota + 1
	// Left: the participant left; the feeds of it have ended.
	Left
	// Message: the participant sent Data to the others (Broadcast).
	Message
)

// Participant is a member of one conversation for the life of a front-end
// session: unlike a Beep user, whose devices follow the user's last join, a
// participant never moves, and one user may be several participants at once
// (a 1:1 call and a room).
type Participant struct {
	Identity

	m     *Manager
	c     *Conversation
	watch func(Event)

	// conv is c while the participant is in it, nil after it left: its
	// tracks' packets follow it (Track.Conversation).
	conv atomic.Pointer[Conversation]

	// remote is set for a participant connected to another router of a
	// cluster, whose tracks are relayed here (AddRemoteParticipantTrack):
	// it has no connection here and only publishes.
	remote bool

	// Guarded by Manager.mu.
	pub    *rtc.Peer // publishing connection, or nil
	tracks []*Track  // published, in start order
	left   bool

	// Guarded by Conversation.mu (Receive): whose media the publishing
	// connection's down-tracks carry, and those down-tracks once it is
	// connected.
	from     *Participant
	pubDowns []*rtc.DownTrack
}

// Identity names a participant.
type Identity struct {
	// ID names the participant in its conversation.
	ID string
	// Claim is the identity of the participant's client.
	Claim claim.Claim
	// Display is the name other participants' clients show, for
	// front-ends that have one; "" if none. It travels with the
	// participant's media to the other routers of a cluster.
	Display string
}

// Enter makes participant who, in conversation convID, creating the
// conversation. watch, if not nil, is told of the other participants'
// events; it is called without locks held, from the goroutine that made
// the change, and must not block.
func (m *Manager) Enter(convID string, who Identity, watch func(Event)) (*Participant, error) {
	id := who.ID
	if convID == "" || id == "" {
		return nil, errors.New("room: enter needs a conversation and a participant id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	conv, ok := m.convs[convID]
	if !ok && m.cfg.MaxConversations > 0 && len(m.convs) >= m.cfg.MaxConversations {
		return nil, fmt.Errorf("%w (%d)", ErrTooManyConversations, m.cfg.MaxConversations)
	}
	if ok {
		if _, taken := conv.participants[id]; taken {
			return nil, fmt.Errorf("%w: %q", ErrParticipantExists, id)
		}
		if max := m.cfg.MaxPeersPerConversation; max > 0 && devices(conv) >= max {
			return nil, fmt.Errorf("%w (%d devices)", ErrConversationFull, max)
		}
	}
	if !ok {
		conv = newConversation(convID, m.cfg.Mixing)
		m.convs[convID] = conv
	}
	p := &Participant{Identity: who, m: m, c: conv, watch: watch}
	p.conv.Store(conv)
	conv.participants[id] = p
	m.changed() // the router now listens in conv (listens)
	m.log.Info("participant entered", "conversation", convID, "participant", id, "user", who.Claim.UserID)
	return p, nil
}

// Conversation returns the participant's conversation.
func (p *Participant) Conversation() *Conversation { return p.c }

// Publisher returns the participant's publishing connection, making it on
// the first call: a peer with video that the client offers to (Answer) and
// on which the router receives. Its tracks are forwarded to the feeds of
// the participant. It sends only for Receive: on the m-lines of the
// client's offer that receive, or on those the router offers with
// rtc.Peer.AddSendRecvTrack.
func (p *Participant) Publisher() (*rtc.Peer, error) {
	if p.remote {
		return nil, errRemote
	}
	m := p.m
	m.mu.Lock()
	if p.left {
		m.mu.Unlock()
		return nil, ErrLeft
	}
	if p.pub != nil {
		defer m.mu.Unlock()
		return p.pub, nil
	}
	m.mu.Unlock()
	peer, err := m.engine.NewPeer(p.Claim, (*publisher)(p), rtc.PeerOptions{Video: true})
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	left, existing := p.left, p.pub
	if !left && existing == nil {
		p.pub = peer
	}
	m.mu.Unlock()
	switch {
	case left:
		peer.Close()
		return nil, ErrLeft
	case existing != nil: // made by a concurrent call
		peer.Close()
		return existing, nil
	}
	return peer, nil
}

// errRemote is returned for what only a local participant does.
var errRemote = errors.New("room: the participant is connected to another router")

// Remote reports whether the participant is connected to another router
// of a cluster: it publishes here through the relay, and cannot subscribe.
func (p *Participant) Remote() bool { return p.remote }

// Others returns the other participants of p's conversation, those
// connected to other routers included, in no particular order.
func (p *Participant) Others() []*Participant {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	return p.c.others(p)
}

// Other returns the participant of p's conversation named id, or nil if
// there is none or it is p.
func (p *Participant) Other(id string) *Participant {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	if q := p.c.participants[id]; q != p {
		return q
	}
	return nil
}

// MaxMessage bounds the Data of a Broadcast.
const MaxMessage = 32 << 10

// ErrMessageTooLarge is returned by Broadcast for data over MaxMessage.
var ErrMessageTooLarge = fmt.Errorf("room: message larger than %d bytes", MaxMessage)

// Broadcast sends data, whose format is the front-end's, to the other
// participants of p's conversation: their watches are told a Message of
// p, here and, through Config.Messages, on the other routers of a
// cluster. It never blocks on the network.
func (p *Participant) Broadcast(data []byte) error {
	if len(data) > MaxMessage {
		return ErrMessageTooLarge
	}
	if p.remote {
		return errRemote
	}
	m := p.m
	m.mu.Lock()
	if p.left {
		m.mu.Unlock()
		return ErrLeft
	}
	others := p.c.others(p)
	m.mu.Unlock()
	notify(others, Event{Kind: Message, Participant: p, Data: data})
	if m.cfg.Messages != nil {
		m.cfg.Messages.Broadcast(p.c.ID, p.Identity, data)
	}
	return nil
}

// Deliver hands a message of participant who, connected to another router
// of a cluster, to the participants of conversation convID here, as
// Broadcast does on who's router. A message over MaxMessage, a
// conversation that is not here, or a sender whose id a local participant
// holds, is ignored.
func (m *Manager) Deliver(convID string, who Identity, data []byte) {
	if len(data) > MaxMessage {
		return
	}
	m.mu.Lock()
	c := m.convs[convID]
	if c == nil {
		m.mu.Unlock()
		return
	}
	from := c.participants[who.ID]
	switch {
	case from == nil:
		from = &Participant{Identity: who, m: m, c: c, remote: true, left: true}
	case !from.remote:
		m.mu.Unlock()
		return
	}
	others := c.others(from)
	m.mu.Unlock()
	notify(others, Event{Kind: Message, Participant: from, Data: data})
}

// Tracks returns the participant's published tracks.
func (p *Participant) Tracks() []*Track {
	p.m.mu.Lock()
	defer p.m.mu.Unlock()
	return slices.Clone(p.tracks)
}

// Leave takes the participant out of its conversation: its connections and
// the feeds of it close, and the others are told.
func (p *Participant) Leave() { p.leave(true) }

// leave is Leave; closePub is false when the publishing connection is
// closing already (Leave is then called from within its Close).
func (p *Participant) leave(closePub bool) {
	m := p.m
	m.mu.Lock()
	if p.left {
		m.mu.Unlock()
		return
	}
	p.left = true
	p.conv.Store(nil) // the gate stops its packets from here on
	c := p.c
	delete(c.participants, p.ID)
	pub := p.pub
	var feeds []*Feed
	c.mu.Lock()
	for _, f := range c.feeds {
		if f.sub == p || f.pub == p {
			feeds = append(feeds, f)
		}
	}
	c.tracks = slices.DeleteFunc(c.tracks, func(t *Track) bool {
		if t.part == p {
			t.targets.Store(nil)
			return true
		}
		return false
	})
	c.receivers = slices.DeleteFunc(c.receivers, func(q *Participant) bool { return q == p })
	for _, d := range p.pubDowns {
		d.SetSource(nil)
	}
	c.mu.Unlock()
	others := c.others(p)
	if len(c.members) == 0 && len(c.participants) == 0 {
		m.end(c)
	}
	if !p.remote {
		m.changed()
	}
	m.mu.Unlock()

	for _, f := range feeds {
		if f.pub == p {
			f.end(errPublisherLeft, true)
		} else {
			f.end(errSubscriberLeft, true)
		}
	}
	if pub != nil && closePub {
		pub.Close()
	}
	notify(others, Event{Kind: Left, Participant: p})
	m.log.Info("participant left", "conversation", c.ID, "participant", p.ID, "remote", p.remote)
}

// The reasons feeds end when a participant leaves: the feeds of it, and
// the feeds it received.
var (
	errPublisherLeft  = errors.New("publisher left")
	errSubscriberLeft = errors.New("subscriber left")
)

// others returns the participants of c other than p. Callers hold
// Manager.mu.
func (c *Conversation) others(p *Participant) []*Participant {
	var ps []*Participant
	for _, q := range c.participants {
		if q != p {
			ps = append(ps, q)
		}
	}
	return ps
}

// notify tells the watchers of ps of e. Callers hold no lock.
func notify(ps []*Participant, e Event) {
	for _, q := range ps {
		if q.watch != nil {
			q.watch(e)
		}
	}
}

// publisher is a participant's publishing connection's rtc.Handler.
type publisher Participant

// Connected implements rtc.Handler: the connection's down-tracks, if it
// has any (Receive), get bound.
func (pb *publisher) Connected(peer *rtc.Peer) {
	p := (*Participant)(pb)
	c := p.c
	c.mu.Lock()
	p.pubDowns = peer.DownTracks()
	c.mu.Unlock()
	c.sync()
}

// Closed implements rtc.Handler: a publisher whose connection is gone has
// left (its client reconnects as a new participant).
func (pb *publisher) Closed(*rtc.Peer) { (*Participant)(pb).leave(false) }

// Published implements rtc.Handler: the track gets its pipeline chain and
// is forwarded to the feeds of the participant.
func (pb *publisher) Published(up *rtc.UpTrack) (rtc.TrackSink, error) {
	p := (*Participant)(pb)
	t := &Track{UpTrack: up, member: &p.conv, part: p}
	sink, err := p.m.cfg.Sink.Open(t)
	if err != nil {
		return nil, err
	}
	m := p.m
	m.mu.Lock()
	if p.left {
		m.mu.Unlock()
		sink.Close()
		return nil, ErrLeft
	}
	p.addTrack(t)
	return sink, nil
}

// addTrack adds t to p and to p's conversation, releases Manager.mu,
// which the caller holds, and returns once the policies take t into
// account; with p's first track, the other participants are told p
// Published.
func (p *Participant) addTrack(t *Track) {
	first := len(p.tracks) == 0
	p.tracks = append(p.tracks, t)
	c := p.c
	c.mu.Lock()
	c.tracks = append(c.tracks, t)
	c.mu.Unlock()
	others := c.others(p)
	p.m.mu.Unlock()
	c.sync()
	if first {
		notify(others, Event{Kind: Published, Participant: p})
	}
}

// Unpublished implements rtc.Handler.
func (pb *publisher) Unpublished(up *rtc.UpTrack) {
	p := (*Participant)(pb)
	m := p.m
	m.mu.Lock()
	i := slices.IndexFunc(p.tracks, func(t *Track) bool { return t.UpTrack == up })
	if i < 0 {
		m.mu.Unlock()
		return
	}
	t := p.tracks[i]
	p.tracks = slices.Delete(p.tracks, i, i+1)
	m.mu.Unlock()
	p.c.removeTrack(t)
}
