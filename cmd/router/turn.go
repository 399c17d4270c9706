package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/beepvoice/router/turn"
)

// turnConfig is the built-in TURN server's configuration (TURN_*).
type turnConfig struct {
	Listen                string // "": no TURN server
	Secret                string // never logged
	Realm                 string
	TTL                   time.Duration
	PublicIP              net.IP
	MinPort, MaxPort      int
	MaxAllocationsPerUser int
	MaxAllocations        int
}

// loadTURN reads the TURN_* settings with loadConfig's helpers. It reports
// a bad TURN_SECRET itself, as an error that does not quote the value.
func loadTURN(get func(string) string, bad func(string, error), duration func(string) time.Duration, integer func(string, int, int) int) (turnConfig, error) {
	c := turnConfig{
		Listen:                get("TURN_LISTEN"),
		Secret:                get("TURN_SECRET"),
		Realm:                 get("TURN_REALM"),
		TTL:                   duration("TURN_TTL"),
		MaxAllocationsPerUser: integer("TURN_MAX_ALLOCATIONS_PER_USER", 0, 1<<20),
		MaxAllocations:        integer("TURN_MAX_ALLOCATIONS", 0, 1<<30),
	}
	lo, hi, ok := strings.Cut(get("TURN_RELAY_PORTS"), "-")
	var err1, err2 error
	c.MinPort, err1 = strconv.Atoi(strings.TrimSpace(lo))
	c.MaxPort, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || c.MinPort < 1 || c.MaxPort > 65535 || c.MinPort > c.MaxPort {
		bad("TURN_RELAY_PORTS", errors.New("want a port range such as 49152-65535"))
	}
	if s := get("TURN_PUBLIC_IP"); s != "" {
		if c.PublicIP = net.ParseIP(s); c.PublicIP == nil || c.PublicIP.To4() == nil {
			bad("TURN_PUBLIC_IP", errors.New("want an IPv4 address"))
		}
	}
	if c.Listen == "" {
		return c, nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	ip := net.ParseIP(host)
	switch {
	case err != nil || (host != "" && ip == nil):
		bad("TURN_LISTEN", errors.New("want ip:port or :port"))
	case c.PublicIP == nil && (ip == nil || ip.IsUnspecified()):
		bad("TURN_PUBLIC_IP", errors.New("required when TURN_LISTEN has no specific IP: the relay address clients are told"))
	}
	if len(c.Secret) < 16 {
		return c, errors.New("TURN_SECRET: want at least 16 bytes with TURN_LISTEN (e.g. openssl rand -hex 32)")
	}
	return c, nil
}

// startTURN starts the built-in TURN server, or returns nil when it is off.
// Its relays never reach the networks remote ICE candidates may not name.
func startTURN(c turnConfig, forbidden []netip.Prefix, log *slog.Logger) (*turn.Server, error) {
	if c.Listen == "" {
		return nil, nil
	}
	s, err := turn.New(turn.Config{
		Listen:                c.Listen,
		Realm:                 c.Realm,
		Secret:                c.Secret,
		TTL:                   c.TTL,
		PublicIP:              c.PublicIP,
		MinPort:               c.MinPort,
		MaxPort:               c.MaxPort,
		MaxAllocationsPerUser: orNone(c.MaxAllocationsPerUser),
		MaxAllocations:        orNone(c.MaxAllocations),
		Forbidden:             forbidden,
		Logger:                log,
	})
	if err != nil {
		return nil, fmt.Errorf("TURN_LISTEN=%s: %w", c.Listen, err)
	}
	return s, nil
}
