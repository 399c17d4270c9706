package room

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"
)

// TestIdleMembershipsFreeConversations: joins that never connect fill
// MaxConversations only until IdleMembershipTTL, not MembershipTTL.
func TestIdleMembershipsFreeConversations(t *testing.T) {
	m, err := New(Config{Sink: nopSink{}, MaxConversations: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	refused := 0
	for i := range 12000 {
		err := m.Join(fmt.Sprint("user-", i), fmt.Sprint("conv-", i))
		switch {
		case errors.Is(err, ErrTooManyConversations):
			refused++
		case err != nil:
			t.Fatal(err)
		}
	}
	if refused != 11900 {
		t.Errorf("%d joins refused, want 11900", refused)
	}
	if s := m.Stats(); s.Users != 100 || s.Conversations != 100 {
		t.Errorf("after the joins: %d users, %d conversations; want 100, 100 (refused joins kept)", s.Users, s.Conversations)
	}
	m.expire(time.Now().Add(DefaultIdleMembershipTTL + time.Second))
	if s := m.Stats(); s.Users != 0 || s.Conversations != 0 {
		t.Errorf("after the idle TTL: %d users, %d conversations; want 0, 0", s.Users, s.Conversations)
	}
	if err := m.Join("late", "conv-new"); err != nil {
		t.Errorf("new conversation after the idle TTL: %v", err)
	}
}

// TestRefusedJoinLeavesNothing: a join refused for a limit creates no user,
// membership or conversation.
func TestRefusedJoinLeavesNothing(t *testing.T) {
	t.Run("too many conversations", func(t *testing.T) {
		m, err := New(Config{Sink: nopSink{}, MaxConversations: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close(context.Background())
		if err := m.Join("alice", "conv-1"); err != nil {
			t.Fatal(err)
		}
		if err := m.Join("bob", "conv-2"); !errors.Is(err, ErrTooManyConversations) {
			t.Fatalf("join: %v, want %v", err, ErrTooManyConversations)
		}
		if m.User("bob") != nil || m.Conversation("conv-2") != nil {
			t.Errorf("refused join left user: %t, conversation: %t", m.User("bob") != nil, m.Conversation("conv-2") != nil)
		}
	})
	t.Run("conversation full", func(t *testing.T) {
		m, err := New(Config{Sink: nopSink{}, MaxPeersPerConversation: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close(context.Background())
		if err := m.Join("alice", "conv-1"); err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		m.users["alice"].devices["laptop"] = &device{} // connecting
		m.users["alice"].devices["phone"] = &device{}  // over a lowered limit
		m.mu.Unlock()
		err = m.Join("carol", "conv-1")
		m.mu.Lock()
		clear(m.users["alice"].devices) // not real devices: Close must not touch them
		m.mu.Unlock()
		if !errors.Is(err, ErrConversationFull) {
			t.Fatalf("join: %v, want %v", err, ErrConversationFull)
		}
		if m.User("carol") != nil {
			t.Error("refused join left user carol")
		}
	})
}

// TestIdleTTLKeepsUsersWhoHadADevice: only a user that never had a device
// is forgotten after IdleMembershipTTL; one that has or had a device keeps
// its membership for MembershipTTL.
func TestIdleTTLKeepsUsersWhoHadADevice(t *testing.T) {
	m, err := New(Config{Sink: nopSink{}, MembershipTTL: time.Hour, IdleMembershipTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(context.Background())
	for _, j := range [][2]string{{"alice", "conv-1"}, {"bob", "conv-1"}, {"carol", "conv-2"}} {
		if err := m.Join(j[0], j[1]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.NewPeer(claim.Claim{UserID: "bob", ClientID: "phone"}); err != nil {
		t.Fatal(err)
	}
	p, err := m.NewPeer(claim.Claim{UserID: "carol", ClientID: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	p.Close() // carol had a device

	now := time.Now()
	m.expire(now.Add(2 * time.Minute))
	if m.User("alice") != nil {
		t.Error("alice, who never connected, kept past the idle TTL")
	}
	if m.User("bob") == nil || m.Conversation("conv-1") == nil {
		t.Error("bob, who has a device, lost his membership at the idle TTL")
	}
	if m.User("carol") == nil || m.Conversation("conv-2") == nil {
		t.Error("carol, who had a device, lost her membership at the idle TTL")
	}
	m.expire(now.Add(2 * time.Hour))
	if m.User("carol") != nil || m.Conversation("conv-2") != nil {
		t.Error("carol kept past MembershipTTL")
	}
	if m.User("bob") == nil {
		t.Error("bob, who has a device, forgotten")
	}
}
