package room

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/rtc"
)

// nopSink refuses every track.
type nopSink struct{}

func (nopSink) Open(*Track) (rtc.TrackSink, error) { return nil, errors.New("unused") }

func TestMembershipExpires(t *testing.T) {
	defer goleak.VerifyNone(t)
	m, err := New(Config{Sink: nopSink{}, MembershipTTL: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Join("alice", "conv-1"); err != nil {
		t.Fatal(err)
	}
	if m.Conversation("conv-1") == nil {
		t.Fatal("no conversation after join")
	}
	testutil.Eventually(t, 5*time.Second, "a user with no device to lose its membership after the TTL", func() bool {
		return m.User("alice") == nil && m.Conversation("conv-1") == nil
	})
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestExpireKeepsUsersWithDevices(t *testing.T) {
	m, err := New(Config{Sink: nopSink{}, MembershipTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	_ = m.Join("alice", "conv-1")
	_ = m.Join("bob", "conv-1")
	m.mu.Lock()
	m.users["bob"].devices["phone"] = &device{} // a device
	m.mu.Unlock()
	m.expire(time.Now().Add(2 * time.Hour))
	if m.User("alice") != nil {
		t.Fatal("idle alice kept")
	}
	if m.User("bob") == nil || m.Conversation("conv-1") == nil {
		t.Fatal("bob, who has a device, was forgotten")
	}
	m.mu.Lock()
	delete(m.users["bob"].devices, "phone")
	m.mu.Unlock()
}

// TestConversationLimitCountsConnectingDevices: a device counts against
// MaxPeersPerConversation from its /connect on, not from when its handshakes
// finish, so devices that are still connecting cannot overfill a
// conversation together.
func TestConversationLimitCountsConnectingDevices(t *testing.T) {
	tests := []struct {
		name      string
		devices   map[string]int // devices of each member of conv-1, none connected
		joiner    string
		joinerDev int
		wantJoin  error // joiner joins conv-1
		wantAdmit error // a new device of the first member connects
	}{
		{"room left", map[string]int{"alice": 1}, "carol", 0, nil, nil},
		{"joiner fills it", map[string]int{"alice": 1}, "carol", 1, nil, ErrConversationFull},
		{"joiner's connecting device overfills", map[string]int{"alice": 1, "bob": 1}, "carol", 1, ErrConversationFull, ErrConversationFull},
		{"joiner without devices fits", map[string]int{"alice": 1, "bob": 1}, "carol", 0, nil, ErrConversationFull},
		{"one user's two devices fill it", map[string]int{"alice": 2}, "carol", 1, ErrConversationFull, ErrConversationFull},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(Config{Sink: nopSink{}, MaxPeersPerConversation: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close(context.Background())
			addDevices := func(user string, n int) {
				m.mu.Lock()
				defer m.mu.Unlock()
				u := m.user(user)
				for i := range n {
					u.devices[fmt.Sprint("device-", i)] = &device{} // connecting
				}
			}
			first := ""
			for user, n := range tt.devices {
				if first == "" {
					first = user
				}
				if err := m.Join(user, "conv-1"); err != nil {
					t.Fatal(err)
				}
				addDevices(user, n)
			}
			addDevices(tt.joiner, tt.joinerDev)
			if err := m.Join(tt.joiner, "conv-1"); !errors.Is(err, tt.wantJoin) {
				t.Errorf("join: %v, want %v", err, tt.wantJoin)
			}
			m.mu.Lock()
			_, err = m.admit(m.users[first], nil)
			for _, u := range m.users {
				clear(u.devices) // not real devices: Close must not touch them
			}
			m.mu.Unlock()
			if !errors.Is(err, tt.wantAdmit) {
				t.Errorf("admit: %v, want %v", err, tt.wantAdmit)
			}
		})
	}
}

// TestConnectedMembers: the memberships a router keeps alive in a cluster
// are those of users with a connected device; a user without one, or with
// a device still connecting, or in no conversation, is not among them.
func TestConnectedMembers(t *testing.T) {
	m, err := New(Config{Sink: nopSink{}, MembershipTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	_ = m.Join("alice", "conv-1") // a connected device
	_ = m.Join("bob", "conv-2")   // a device still connecting
	_ = m.Join("carol", "conv-1") // no device
	m.mu.Lock()
	m.users["alice"].devices["phone"] = &device{connected: true}
	m.users["alice"].devices["tablet"] = &device{}
	m.users["bob"].devices["phone"] = &device{}
	m.users["dan"] = &User{ID: "dan", devices: map[string]*device{"phone": {connected: true}}} // in no conversation
	m.mu.Unlock()
	got := m.ConnectedMembers()
	if len(got) != 1 || got["alice"] != "conv-1" {
		t.Errorf("ConnectedMembers = %v, want only alice in conv-1", got)
	}
	m.mu.Lock()
	delete(m.users["alice"].devices, "phone")
	delete(m.users["alice"].devices, "tablet")
	delete(m.users["bob"].devices, "phone")
	delete(m.users, "dan")
	m.mu.Unlock()
}
