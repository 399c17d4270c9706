package session

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beepvoice/router/internal/testutil"
)

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
	m.users["bob"].peers["phone"] = &Peer{} // a device
	m.mu.Unlock()
	m.expire(time.Now().Add(2 * time.Hour))
	if m.User("alice") != nil {
		t.Fatal("idle alice kept")
	}
	if m.User("bob") == nil || m.Conversation("conv-1") == nil {
		t.Fatal("bob, who has a device, was forgotten")
	}
	m.mu.Lock()
	delete(m.users["bob"].peers, "phone")
	m.mu.Unlock()
}
