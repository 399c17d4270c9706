package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/internal/throttle"
)

// devOverride is a setting given explicitly that -dev overrides, or keeps
// over a default of its own; logged at start.
type devOverride struct {
	setting, value string // value is redacted where it can hold credentials
	effect         string
	overridden     bool
}

// devOverrides lists the settings -dev overrides (NATS: it always runs the
// embedded server) or whose explicit values it keeps over its own defaults
// (LISTEN, ALLOWED_ORIGINS). PERMISSIONS_HOST and AUTH_JWT_PUBLIC_KEY are
// refused instead (devRefusals).
func devOverrides(getenv func(string) string) []devOverride {
	var out []devOverride
	if v := strings.TrimSpace(getenv("NATS")); v != "" && v != "embedded" {
		out = append(out, devOverride{"NATS", redactURLs(v), "ignored: -dev runs the embedded NATS server (NATS_EMBEDDED_LISTEN opens it to other clients)", true})
	}
	if v := strings.TrimSpace(getenv("LISTEN")); v != "" {
		out = append(out, devOverride{"LISTEN", v, "kept instead of the -dev default :8080", false})
	}
	if v := strings.TrimSpace(getenv("ALLOWED_ORIGINS")); v != "" {
		out = append(out, devOverride{"ALLOWED_ORIGINS", v, "kept instead of the -dev default * (every origin)", false})
	}
	return out
}

// redactURLs returns a comma list of URLs with their user information
// (user and password, or a token) replaced by "redacted".
func redactURLs(list string) string {
	var out []string
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if u, err := url.Parse(s); err == nil && u.User != nil {
			u.User = url.User("redacted")
			s = u.String()
		} else if err != nil && strings.Contains(s, "@") {
			s = "(unparsable URL, redacted)"
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}

// natsRetryEvery is the NATS client's reconnect interval (ReconnectWait).
const natsRetryEvery = time.Second

// natsRetryLog returns the NATS option that logs failed (re)connection
// attempts to an external NATS, without credentials, at most once per 30 s
// with the number not logged.
func natsRetryLog(log *slog.Logger, urls []string) nats.Option {
	gate := &throttle.Gate{Every: 30 * time.Second}
	redacted := redactURLs(strings.Join(urls, ","))
	return nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
		if ok, suppressed := gate.Allow(time.Now()); ok {
			log.Warn("NATS unreachable: retrying", "url", redacted, "retry_every", natsRetryEvery.String(), "err", err, "not_logged", suppressed)
		}
	})
}

// logNATSPending logs, once, an external NATS that was unreachable at
// start: the router serves meanwhile and retries in the background.
func logNATSPending(log *slog.Logger, nc *nats.Conn, urls []string) {
	if nc.IsConnected() {
		return
	}
	log.Warn("NATS unreachable at start: serving without it and retrying in the background (bites are spooled)",
		"url", redactURLs(strings.Join(urls, ",")), "retry_every", natsRetryEvery.String())
}

// startupLog logs what an operator needs once the router listens: the
// settings -dev overrode, the ICE addresses peers will be offered (a
// warning when none is usable), and, in -dev, the page to open.
func (a *app) startupLog(cfg config) {
	for _, o := range cfg.DevOverrides {
		if o.overridden {
			a.log.Warn("-dev overrides a setting", "setting", o.setting, "value", o.value, "effect", o.effect)
		} else {
			a.log.Info("-dev keeps a setting", "setting", o.setting, "value", o.value, "effect", o.effect)
		}
	}
	ice, warn := iceAddresses(cfg, hostIPs())
	if warn != "" {
		a.log.Warn(warn, "ice_addresses", strings.Join(ice, ","))
	} else {
		a.log.Info("ICE addresses announced to clients", "addresses", strings.Join(ice, ","), "udp_port", udpPortDesc(cfg, a.rooms.SharedAddrs()))
	}
	if cfg.Dev {
		urls := pageURLs(a.scheme(), a.ln.Addr(), hostIPs())
		a.log.Info("open "+urls[0], "from_other_machines", strings.Join(urls[1:], " "))
		if a.certs == nil && len(urls) > 1 {
			a.log.Info("browsers allow the microphone only on https or localhost: for another machine, start with -dev -dev-tls")
		}
	}
}

func udpPortDesc(cfg config, shared []net.Addr) string {
	switch {
	case cfg.UDPPort > 0:
		return strconv.Itoa(cfg.UDPPort)
	case cfg.ICEPerPeer:
		return "ephemeral, one per peer"
	}
	var ports []string
	for _, a := range shared {
		if u, ok := a.(*net.UDPAddr); ok && !slices.Contains(ports, strconv.Itoa(u.Port)) {
			ports = append(ports, strconv.Itoa(u.Port))
		}
	}
	return strings.Join(ports, ",") + " (ephemeral, shared by all peers)"
}

// iceAddresses returns the addresses the router's ICE candidates will
// carry, and a warning when clients elsewhere cannot use them: none at all
// (only loopback, without ICE_IPS=127.0.0.1), ICE_IPS naming an address the
// host does not have, or loopback only with TLS for other machines.
func iceAddresses(cfg config, host []net.IP) (addrs []string, warn string) {
	has := func(ip net.IP) bool {
		for _, h := range host {
			if h.Equal(ip) {
				return true
			}
		}
		return ip.IsLoopback()
	}
	var local []net.IP
	if len(cfg.ICEIPs) > 0 {
		for _, ip := range cfg.ICEIPs {
			if !has(ip) {
				warn = fmt.Sprintf("ICE_IPS: %s is not an address of this host: no candidate on it", ip)
				continue
			}
			local = append(local, ip)
		}
	} else {
		for _, ip := range host {
			if !ip.IsLoopback() {
				local = append(local, ip)
			}
		}
	}
	if len(local) == 0 {
		if len(cfg.ICEIPs) == 0 {
			return nil, "no usable ICE address: this host has only loopback, which ICE leaves out unless ICE_IPS=127.0.0.1 (media on this machine only); no client can connect media"
		}
		return nil, "no usable ICE address: no address of ICE_IPS is this host's; no client can connect media"
	}
	if len(cfg.PublicIPs) > 0 {
		return cfg.PublicIPs, warn
	}
	allLoopback := true
	for _, ip := range local {
		addrs = append(addrs, ip.String())
		allLoopback = allLoopback && ip.IsLoopback()
	}
	if warn == "" && allLoopback && cfg.DevTLS {
		warn = "ICE addresses are loopback only: browsers on other machines cannot connect media; leave ICE_IPS empty"
	}
	return addrs, warn
}

// pageURLs returns the URL of the demo page on this machine, then the ones
// other machines can use (none when LISTEN is a loopback address).
func pageURLs(scheme string, addr net.Addr, host []net.IP) []string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return []string{scheme + "://" + addr.String() + "/"}
	}
	port := strconv.Itoa(ta.Port)
	if len(ta.IP) > 0 && !ta.IP.IsUnspecified() {
		return []string{scheme + "://" + net.JoinHostPort(ta.IP.String(), port) + "/"}
	}
	urls := []string{scheme + "://" + net.JoinHostPort("localhost", port) + "/"}
	for _, ip := range host {
		if !ip.IsLoopback() && (ip.To4() != nil || ta.IP.To4() == nil) {
			urls = append(urls, scheme+"://"+net.JoinHostPort(ip.String(), port)+"/")
		}
	}
	return urls
}
