package room

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc"
)

// goneSet is a Config.PeerGone a test controls: the peers it marks are
// gone, as a peer in ICE state disconnected is.
type goneSet struct {
	mu    sync.Mutex
	peers map[*rtc.Peer]bool
}

func (g *goneSet) mark(p *rtc.Peer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peers == nil {
		g.peers = make(map[*rtc.Peer]bool)
	}
	g.peers[p] = true
}

func (g *goneSet) gone(p *rtc.Peer) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.peers[p]
}

func closed(p *rtc.Peer) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
	}
}

func newPeer(t *testing.T, m *Manager, user, client string) *rtc.Peer {
	t.Helper()
	p, err := m.NewPeer(claim.Claim{UserID: user, ClientID: client})
	if err != nil {
		t.Fatalf("device %s/%s refused: %v", user, client, err)
	}
	return p
}

// TestUserLimitEvictsGoneDevice: a user at MaxPeersPerUser whose device is
// gone connects a new device at once; a live device is never evicted.
func TestUserLimitEvictsGoneDevice(t *testing.T) {
	var g goneSet
	m, err := New(Config{Sink: nopSink{}, MaxPeersPerUser: 2, PeerGone: g.gone})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	a := newPeer(t, m, "alice", "laptop")
	b := newPeer(t, m, "alice", "phone")
	g.mark(a) // the laptop closed its tab: ICE disconnected, not yet failed

	c, err := m.NewPeer(claim.Claim{UserID: "alice", ClientID: "tablet"})
	if err != nil {
		t.Fatalf("new device of a user whose other device is gone: %v", err)
	}
	if !closed(a) || m.Peer("alice", "laptop") != nil {
		t.Error("the gone device was not closed and forgotten")
	}
	if _, err := m.NewPeer(claim.Claim{UserID: "alice", ClientID: "watch"}); !errors.Is(err, ErrTooManyDevices) {
		t.Errorf("third live device: %v, want %v", err, ErrTooManyDevices)
	}
	if closed(b) || closed(c) || m.Peer("alice", "phone") != b || m.Peer("alice", "tablet") != c {
		t.Error("a live device was evicted")
	}
	if DefaultPeerGone(b) {
		t.Error("DefaultPeerGone: a connecting peer is gone")
	}
}

// TestConversationLimitEvictsGoneDevice: a conversation at
// MaxPeersPerConversation makes room, for a new device or a joining user's
// devices, by closing a gone device, never a live one.
func TestConversationLimitEvictsGoneDevice(t *testing.T) {
	var g goneSet
	m, err := New(Config{Sink: nopSink{}, MaxPeersPerConversation: 2, PeerGone: g.gone})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	for _, u := range []string{"alice", "bob"} {
		if err := m.Join(u, "conv-1"); err != nil {
			t.Fatal(err)
		}
	}
	a1 := newPeer(t, m, "alice", "laptop")
	a2 := newPeer(t, m, "alice", "phone")
	g.mark(a1)

	// A new device of another member.
	b1, err := m.NewPeer(claim.Claim{UserID: "bob", ClientID: "phone"})
	if err != nil {
		t.Fatalf("new device in a conversation whose device is gone: %v", err)
	}
	if !closed(a1) || m.Peer("alice", "laptop") != nil {
		t.Error("the gone device was not closed and forgotten")
	}
	if _, err := m.NewPeer(claim.Claim{UserID: "bob", ClientID: "laptop"}); !errors.Is(err, ErrConversationFull) {
		t.Errorf("device in a conversation of live devices: %v, want %v", err, ErrConversationFull)
	}

	// A joining user with a device.
	c1 := newPeer(t, m, "carol", "phone")
	if err := m.Join("carol", "conv-1"); !errors.Is(err, ErrConversationFull) {
		t.Errorf("join into a conversation of live devices: %v, want %v", err, ErrConversationFull)
	}
	if closed(a2) || closed(b1) || closed(c1) {
		t.Fatal("a live device was evicted")
	}
	g.mark(b1)
	if err := m.Join("carol", "conv-1"); err != nil {
		t.Fatalf("join into a conversation whose device is gone: %v", err)
	}
	if !closed(b1) || m.Peer("bob", "phone") != nil {
		t.Error("the gone device was not closed and forgotten")
	}
	if closed(a2) || closed(c1) {
		t.Error("a live device was evicted")
	}
}
