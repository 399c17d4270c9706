package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/rtc"
)

// config is the router's configuration, from the environment.
type config struct {
	Listen          string
	MetricsListen   string
	NATS            []string // nil: embedded
	NATSExpose      string   // embedded server's client listen address; "": in-process only
	NATSSecurity    natsSecurity
	PermissionsHost string // "allow-all" skips the check
	PermTimeout     time.Duration
	UDPPort         int
	ICEPerPeer      bool // ICE_SOCKETS=per-peer: without UDP_PORT, sockets of each peer's own
	ICEIPs          []net.IP
	PublicIPs       []string
	ICEServers      []webrtc.ICEServer
	Pipeline        string
	ConnectTimeout  time.Duration
	ICEDisconnected time.Duration
	ICEFailed       time.Duration
	ICEKeepalive    time.Duration
	OfferTimeout    time.Duration
	MaxMessage      int64
	MaxSlots        int
	MaxMediaLines   int
	MaxTracks       int
	Forbidden       []netip.Prefix // networks remote ICE candidates may not name: the defaults and ICE_FORBIDDEN_NETWORKS
	KeyframeEvery   time.Duration
	TrackBuffer     int
	PionEgress      bool
	PionIngress     bool
	LogFormat       string
	LogLevel        slog.Level
	ShutdownTimeout time.Duration
	Dev             bool

	MaxPeersPerUser int
	MaxPeersPerConv int
	MaxConvs        int
	MembershipTTL   time.Duration
	IdleTTL         time.Duration
	JoinRate        float64
	JoinBurst       int
	// The embedded NATS server's JetStream store; "" a temporary one.
	NATSStoreDir string
	// The Arbiter API (signal/arbiter).
	ArbiterMaxRooms        int
	ArbiterIdleRooms       int
	ArbiterOrigins         []string
	ArbiterMaxParticipants int
	ArbiterReplicas        int
	// Scale-out across routers on one NATS (package cluster).
	Cluster            bool
	ClusterHeartbeat   time.Duration
	MembershipReplicas int
	// The Sylk API (signal/sylk).
	SylkAccounts            string
	SylkRingTimeout         time.Duration
	SylkMaxConns            int
	SylkMaxCalls            int
	SylkMaxRoomParticipants int
	SIPRegistrar            string
	SIPTimeout              time.Duration
	SIPExpires              time.Duration
	SIPMaxInFlight          int
	// Bounds of signalling sockets and streams (0: no bound).
	MaxStreamsPerUser int
	MaxStreams        int
	MaxPendingPerAddr int
	MaxPending        int
	HTTPReadHeader    time.Duration
	HTTPRead          time.Duration
	HTTPWrite         time.Duration
	HTTPIdle          time.Duration
	Origins           []string
	JWTPublicKey      string
	TURN              turnConfig // the built-in TURN server; off while Listen is ""
	// TLS on LISTEN: a PEM certificate (chain) and key, or none; DevTLS
	// (the -dev-tls flag, set by main) makes a self-signed one.
	TLSCert, TLSKey string
	DevTLS          bool
	// DevOverrides describes the settings given explicitly that -dev
	// overrides or keeps over its own defaults, for the start-up log.
	DevOverrides []devOverride
}

// setting documents one environment variable; the README's table is made
// from the same facts.
type setting struct {
	name, def, doc string
}

// settings lists every environment variable the router reads.
var settings = []setting{
	{"LISTEN", ":80", "HTTP listen address (-dev: :8080)"},
	{"METRICS_LISTEN", "", "serve /metrics, /healthz and /readyz on this address instead of LISTEN (e.g. 127.0.0.1:9090); plain HTTP, also with TLS_CERT"},
	{"TLS_CERT", "", "path of a PEM certificate (chain): serve HTTPS and WSS on LISTEN (HTTP/2 where the client offers it); re-read on SIGHUP; with TLS_KEY"},
	{"TLS_KEY", "", "path of the PEM private key of TLS_CERT; re-read on SIGHUP"},
	{"NATS", "embedded", "NATS URL or comma list; `embedded` runs an in-process NATS server"},
	{"NATS_EMBEDDED_LISTEN", "", "with NATS=embedded, also serve NATS clients on this address (e.g. 127.0.0.1:4222); empty: in-process only"},
	{"NATS_CREDS", "", "path of a NATS credentials file (user JWT and nkey seed, as `nsc` writes it) to authenticate to an external NATS with; re-read at every reconnect"},
	{"NATS_TLS_CA", "", "path of the PEM CA certificate(s) an external NATS's server certificates must chain to; turns TLS on (also with nats:// URLs); re-read at every reconnect"},
	{"NATS_TLS_CERT", "", "path of a PEM client certificate for NATS servers that verify clients (`verify: true`); with NATS_TLS_KEY; turns TLS on"},
	{"NATS_TLS_KEY", "", "path of the PEM private key of NATS_TLS_CERT"},
	{"PERMISSIONS_HOST", "http://permissions", "backend-permissions base URL; `allow-all` skips the check (demos only)"},
	{"PERMISSIONS_TIMEOUT", "5s", "deadline of one permission check; past it /join answers 503"},
	{"UDP_PORT", "0", "one UDP port for all ICE traffic (pion UDP mux); 0: one ephemeral port, shared by all peers (see ICE_SOCKETS)"},
	{"ICE_SOCKETS", "shared", "with UDP_PORT=0: `shared`, all peers on one socket per ICE address on an ephemeral port, logged at start as udp_port (every copy of a packet leaves with one sendmmsg); `per-peer`, sockets of each peer's own, as before round 4 of docs/performance.md (one sendto per copy)"},
	{"ICE_IPS", "", "comma list of local IPs ICE gathers on; empty: every non-loopback address; 127.0.0.1 keeps media on loopback"},
	{"PUBLIC_IPS", "", "comma list of IPs announced instead of the local ones (1:1 NAT)"},
	{"ICE_SERVERS", "", "comma list of STUN/TURN URLs"},
	{"TURN_USERNAME", "", "username for the TURN URLs of ICE_SERVERS"},
	{"TURN_CREDENTIAL", "", "credential for the TURN URLs of ICE_SERVERS"},
	{"TURN_LISTEN", "", "UDP address of the built-in TURN server (e.g. :3478); empty: no TURN server"},
	{"TURN_SECRET", "", "secret the built-in TURN server derives credentials from (TURN REST API convention; at least 16 bytes); required with TURN_LISTEN"},
	{"TURN_REALM", "beep", "realm of the built-in TURN server's credentials"},
	{"TURN_TTL", "24h", "how long a TURN credential handed out by GET /ice-servers works"},
	{"TURN_PUBLIC_IP", "", "IPv4 address the built-in TURN server announces for its relays and in its URL; empty: TURN_LISTEN's IP, which must then be a specific one"},
	{"TURN_RELAY_PORTS", "49152-65535", "UDP port range of the built-in TURN server's relays"},
	{"TURN_MAX_ALLOCATIONS_PER_USER", "8", "most live TURN allocations of one user (a browser makes one per local address); 0: no limit"},
	{"TURN_MAX_ALLOCATIONS", "1000", "most live TURN allocations in all; 0: no limit"},
	{"PIPELINE", "", "path of the pipeline YAML file; empty: the built-in default (see -print-pipeline)"},
	{"CONNECT_TIMEOUT", "30s", "a peer that has not connected by then is closed"},
	{"ICE_DISCONNECTED_TIMEOUT", "5s", "a peer that sent nothing (not even ICE keepalives) for this long is disconnected"},
	{"ICE_FAILED_TIMEOUT", "10s", "a disconnected peer that stays silent this much longer is closed and released (pion v3 ignores DTLS close_notify, so this is how a closed client is seen)"},
	{"ICE_KEEPALIVE", "2s", "interval of ICE keepalives to each peer"},
	{"OFFER_TIMEOUT", "10s", "a /connect socket must send its offer within this time"},
	{"MAX_MESSAGE", "65536", "largest signalling WebSocket message in bytes"},
	{"MAX_SLOTS", "16", "most receiving audio m-lines one offer may have"},
	{"MAX_MEDIA_LINES", "32", "most m-lines of any kind (audio, video, data) one offer may have; at least MAX_SLOTS"},
	{"MAX_TRACKS_PER_PEER", "4", "most tracks one device may publish at a time; further ones are refused (not read) and counted"},
	{"ICE_FORBIDDEN_NETWORKS", "", "comma list of CIDRs (e.g. private ranges 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7) that remote ICE candidates may not name, besides the defaults: link-local (cloud metadata included), unspecified, multicast, documentation, and loopback unless ICE_IPS has a loopback address"},
	{"KEYFRAME_INTERVAL", "500ms", "shortest time between two keyframe requests (PLI/FIR) to one publisher's video track, however many subscribers ask"},
	{"MAX_PEERS_PER_USER", "10", "most devices of one user, connecting ones included; 0: no limit"},
	{"MAX_PEERS_PER_CONVERSATION", "200", "most devices in one conversation, connecting ones included; 0: no limit"},
	{"MAX_CONVERSATIONS", "10000", "most conversations in the process; 0: no limit"},
	{"MEMBERSHIP_TTL", "24h", "a user with no connected device for this long is forgotten, membership included"},
	{"IDLE_MEMBERSHIP_TTL", "2m", "a user who joined and never connected a device is forgotten this long after the join, membership included (at most MEMBERSHIP_TTL)"},
	{"JOIN_RATE", "5", "joins per second allowed per user (token bucket); 0: no limit"},
	{"JOIN_BURST", "10", "joins a user may make at once before JOIN_RATE applies"},
	{"SUBSCRIBE_MAX_PER_USER", "64", "most open device signalling streams (/subscribe) of one user; past it 429 (a device replacing its own stream is still accepted); 0: no limit"},
	{"SUBSCRIBE_MAX", "10000", "most open /subscribe streams of the router; past it 503; 0: no limit"},
	{"CONNECT_MAX_PENDING_PER_ADDR", "16", "most /connect sockets of one client address that have not sent their offer yet; past it 429 before the upgrade; 0: no limit"},
	{"CONNECT_MAX_PENDING", "1000", "most /connect sockets of all clients that have not sent their offer yet; past it 503; 0: no limit"},
	{"NATS_STORE_DIR", "", "with NATS=embedded, the directory of the embedded JetStream store (the Arbiter rooms), kept across restarts; empty: a temporary directory removed at exit"},
	{"CLUSTER", "auto", "`on`: share memberships (JetStream bucket) and relay media with the other routers on the same NATS; `off`: this router alone; `auto`: on with an external NATS, off with `embedded`"},
	{"CLUSTER_HEARTBEAT", "500ms", "how often a router announces the conversations it listens in; a router silent for three heartbeats is no longer relayed to"},
	{"MEMBERSHIP_REPLICAS", "1", "replicas of the shared memberships' JetStream bucket (3 on a 3-node NATS cluster)"},
	{"ARBITER_MAX_ROOMS", "10000", "most Arbiter rooms (PUT/POST /createRoom answers 503 past it); 0: no limit"},
	{"ARBITER_IDLE_ROOMS", "0", "unclaimed Arbiter rooms kept ready (made at start and after each claim)"},
	{"ARBITER_ORIGINS", "*", "comma list of origins allowed to use the Arbiter API and gateway (CORS and the WebSocket Origin check); * allows all"},
	{"ARBITER_MAX_PARTICIPANTS", "50", "most participants of one Arbiter room; 0: no limit"},
	{"ARBITER_REPLICAS", "1", "replicas of the Arbiter rooms' JetStream bucket (3 on a 3-node NATS cluster)"},
	{"SYLK_ACCOUNTS", "", "path of the Sylk API's local accounts file (one account:ha1 line each, # comments; re-read on SIGHUP); empty: Sylk registration is refused (in -dev any account registers)"},
	{"SYLK_RING_TIMEOUT", "60s", "a Sylk call nobody answers ends after this (408 Request Timeout)"},
	{"SYLK_MAX_CONNECTIONS", "10000", "most open Sylk API sockets (/webrtcgateway/ws); past it 503; 0: no limit"},
	{"SYLK_MAX_CALLS_PER_ACCOUNT", "4", "most Sylk calls, ringing or up, of one account; a callee past it is busy (486); 0: no limit"},
	{"SYLK_MAX_ROOM_PARTICIPANTS", "50", "most participants of one Sylk video room; 0: no limit"},
	{"SIP_REGISTRAR", "", "SIP registrar (sip:host[:port][;transport=udp]) that decides and keeps Sylk registrations instead of SYLK_ACCOUNTS: account-register sends a REGISTER answering the digest challenge from the HA1"},
	{"SIP_TIMEOUT", "10s", "bounds one SIP transaction with the registrar (408 Request Timeout past it)"},
	{"SIP_EXPIRES", "600s", "registration lifetime asked of the SIP registrar; refreshed at half the lifetime granted"},
	{"SIP_MAX_IN_FLIGHT", "64", "most SIP REGISTER transactions in flight; past it a registration fails with 503"},
	{"HTTP_READ_HEADER_TIMEOUT", "10s", "time a client has to send request headers (a slowloris client is cut off)"},
	{"HTTP_READ_TIMEOUT", "30s", "time a client has to send a whole request"},
	{"HTTP_WRITE_TIMEOUT", "30s", "time to write a response (WebSockets and SSE streams set their own deadlines)"},
	{"HTTP_IDLE_TIMEOUT", "120s", "keep-alive connections idle this long are closed"},
	{"ALLOWED_ORIGINS", "", "comma list of browser origins allowed besides the router's own (WebSocket Origin check and CORS); `*` allows all; requests without Origin (native apps) are always allowed"},
	{"AUTH_JWT_PUBLIC_KEY", "", "path of a PEM RSA public key: verify Beep's RS256 token (?token= or Authorization: Bearer, claims userid and clientid) instead of trusting X-User-Claim"},
	{"TRACK_BUFFER_BYTES", "4096", "received audio of one track that may wait for the router (about half a second of Opus); past it packets are dropped and counted rather than delivered late"},
	{"EGRESS", "direct", "`direct`: slots encrypt and send their packets themselves (less CPU per packet); `pion`: through pion's generic write path"},
	{"INGRESS", "direct", "`direct`: a connected peer's media is taken, authenticated and decrypted at the socket and handed to its track once; `pion`: through pion's generic read path (four goroutine hand-offs)"},
	{"LOG_FORMAT", "text", "`text` or `json`"},
	{"LOG_LEVEL", "info", "`debug`, `info`, `warn` or `error`"},
	{"SHUTDOWN_TIMEOUT", "10s", "how long SIGTERM waits for peers to close and bites to flush"},
}

// loadConfig reads the configuration through getenv. An invalid value is an
// error that names the setting.
func loadConfig(getenv func(string) string, dev bool) (config, error) {
	get := func(name string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		for _, s := range settings {
			if s.name == name {
				if name == "LISTEN" && dev {
					return ":8080"
				}
				return s.def
			}
		}
		panic("undeclared setting " + name)
	}
	c := config{Dev: dev}
	var errs []error
	bad := func(name string, err error) {
		errs = append(errs, fmt.Errorf("%s=%q: %w", name, getenv(name), err))
	}
	duration := func(name string) time.Duration {
		d, err := time.ParseDuration(get(name))
		if err != nil || d <= 0 {
			bad(name, errors.New("want a positive duration such as 5s"))
		}
		return d
	}
	integer := func(name string, min, max int) int {
		n, err := strconv.Atoi(get(name))
		if err != nil || n < min || n > max {
			bad(name, fmt.Errorf("want an integer from %d to %d", min, max))
		}
		return n
	}
	// either reports whether setting name is other, not def: the one two
	// values it may have.
	either := func(name, def, other string) bool {
		switch get(name) {
		case def:
		case other:
			return true
		default:
			bad(name, fmt.Errorf("want %s or %s", def, other))
		}
		return false
	}

	c.Listen = get("LISTEN")
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("LISTEN", errors.New("want host:port or :port"))
	}
	c.MetricsListen = get("METRICS_LISTEN")
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("METRICS_LISTEN", errors.New("want host:port or :port"))
		}
	}
	if n := get("NATS"); n != "embedded" && !dev {
		for _, u := range strings.Split(n, ",") {
			u = strings.TrimSpace(u)
			if p, err := url.Parse(u); err != nil || p.Host == "" {
				bad("NATS", errors.New("want `embedded` or nats:// URLs"))
				break
			}
			c.NATS = append(c.NATS, u)
		}
	}
	c.NATSSecurity = natsSecurity{Creds: get("NATS_CREDS"), CA: get("NATS_TLS_CA"), CertFile: get("NATS_TLS_CERT"), KeyFile: get("NATS_TLS_KEY")}
	if err := c.NATSSecurity.check(c.NATS != nil); err != nil {
		errs = append(errs, err)
	}
	c.NATSExpose = get("NATS_EMBEDDED_LISTEN")
	if c.NATSExpose != "" {
		if _, _, err := net.SplitHostPort(c.NATSExpose); err != nil {
			bad("NATS_EMBEDDED_LISTEN", errors.New("want host:port"))
		}
	}
	c.PermissionsHost = get("PERMISSIONS_HOST")
	if dev {
		// devRefusals refuses an explicit PERMISSIONS_HOST below.
		c.PermissionsHost = "allow-all"
	}
	if c.PermissionsHost != "allow-all" {
		if u, err := url.Parse(c.PermissionsHost); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("PERMISSIONS_HOST", errors.New("want an http(s) URL or allow-all"))
		}
	}
	c.PermTimeout = duration("PERMISSIONS_TIMEOUT")
	c.UDPPort = integer("UDP_PORT", 0, 65535)
	c.ICEPerPeer = either("ICE_SOCKETS", "shared", "per-peer")
	for _, s := range splitList(get("ICE_IPS")) {
		ip := net.ParseIP(s)
		if ip == nil {
			bad("ICE_IPS", fmt.Errorf("%q is not an IP address", s))
			continue
		}
		c.ICEIPs = append(c.ICEIPs, ip)
	}
	for _, s := range splitList(get("PUBLIC_IPS")) {
		if net.ParseIP(s) == nil {
			bad("PUBLIC_IPS", fmt.Errorf("%q is not an IP address", s))
			continue
		}
		c.PublicIPs = append(c.PublicIPs, s)
	}
	servers, err := rtc.ParseICEServers(get("ICE_SERVERS"), get("TURN_USERNAME"), get("TURN_CREDENTIAL"))
	if err != nil {
		bad("ICE_SERVERS", err)
	}
	c.ICEServers = servers
	c.Pipeline = get("PIPELINE")
	c.ConnectTimeout = duration("CONNECT_TIMEOUT")
	c.ICEDisconnected = duration("ICE_DISCONNECTED_TIMEOUT")
	c.ICEFailed = duration("ICE_FAILED_TIMEOUT")
	c.ICEKeepalive = duration("ICE_KEEPALIVE")
	c.OfferTimeout = duration("OFFER_TIMEOUT")
	c.MaxMessage = int64(integer("MAX_MESSAGE", 1024, 16<<20))
	c.MaxSlots = integer("MAX_SLOTS", 1, 64)
	c.MaxMediaLines = integer("MAX_MEDIA_LINES", 1, 256)
	if c.MaxMediaLines < c.MaxSlots {
		bad("MAX_MEDIA_LINES", fmt.Errorf("want at least MAX_SLOTS (%d)", c.MaxSlots))
	}
	c.MaxTracks = integer("MAX_TRACKS_PER_PEER", 1, 64)
	c.Forbidden = rtc.DefaultForbiddenNetworks(c.ICEIPs)
	for _, s := range splitList(get("ICE_FORBIDDEN_NETWORKS")) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				bad("ICE_FORBIDDEN_NETWORKS", fmt.Errorf("%q is not a CIDR such as 10.0.0.0/8", s))
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		c.Forbidden = append(c.Forbidden, p.Masked())
	}
	c.KeyframeEvery = duration("KEYFRAME_INTERVAL")
	c.TrackBuffer = integer("TRACK_BUFFER_BYTES", 1500, 1<<20)
	c.PionEgress = either("EGRESS", "direct", "pion")
	c.PionIngress = either("INGRESS", "direct", "pion")
	c.LogFormat = get("LOG_FORMAT")
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("LOG_FORMAT", errors.New("want text or json"))
	}
	if err := c.LogLevel.UnmarshalText([]byte(get("LOG_LEVEL"))); err != nil {
		bad("LOG_LEVEL", errors.New("want debug, info, warn or error"))
	}
	c.ShutdownTimeout = duration("SHUTDOWN_TIMEOUT")
	c.MaxPeersPerUser = integer("MAX_PEERS_PER_USER", 0, 1<<20)
	c.MaxPeersPerConv = integer("MAX_PEERS_PER_CONVERSATION", 0, 1<<20)
	c.MaxConvs = integer("MAX_CONVERSATIONS", 0, 1<<30)
	c.MembershipTTL = duration("MEMBERSHIP_TTL")
	c.IdleTTL = duration("IDLE_MEMBERSHIP_TTL")
	if r, err := strconv.ParseFloat(get("JOIN_RATE"), 64); err != nil || r < 0 {
		bad("JOIN_RATE", errors.New("want a number of joins per second, 0 for no limit"))
	} else {
		c.JoinRate = r
	}
	c.JoinBurst = integer("JOIN_BURST", 1, 1<<20)
	c.NATSStoreDir = get("NATS_STORE_DIR")
	c.ArbiterMaxRooms = integer("ARBITER_MAX_ROOMS", 0, 1<<30)
	c.ArbiterIdleRooms = integer("ARBITER_IDLE_ROOMS", 0, 1<<16)
	c.ArbiterMaxParticipants = integer("ARBITER_MAX_PARTICIPANTS", 0, 1<<20)
	c.ArbiterReplicas = integer("ARBITER_REPLICAS", 1, 5)
	switch v := get("CLUSTER"); v {
	case "on":
		c.Cluster = true
	case "off":
	case "auto":
		c.Cluster = c.NATS != nil
	default:
		bad("CLUSTER", errors.New("want on, off or auto"))
	}
	c.ClusterHeartbeat = duration("CLUSTER_HEARTBEAT")
	c.MembershipReplicas = integer("MEMBERSHIP_REPLICAS", 1, 5)
	for _, o := range splitList(get("ARBITER_ORIGINS")) {
		if u, err := url.Parse(o); o != "*" && (err != nil || u.Scheme == "" || u.Host == "") {
			bad("ARBITER_ORIGINS", fmt.Errorf("%q is not an origin such as https://app.example.org", o))
			continue
		}
		c.ArbiterOrigins = append(c.ArbiterOrigins, o)
	}
	c.SIPRegistrar = get("SIP_REGISTRAR")
	c.SIPTimeout = duration("SIP_TIMEOUT")
	c.SIPExpires = duration("SIP_EXPIRES")
	c.SIPMaxInFlight = integer("SIP_MAX_IN_FLIGHT", 1, 1<<16)
	c.SylkAccounts = get("SYLK_ACCOUNTS")
	c.SylkRingTimeout = duration("SYLK_RING_TIMEOUT")
	c.SylkMaxConns = integer("SYLK_MAX_CONNECTIONS", 0, 1<<30)
	c.SylkMaxCalls = integer("SYLK_MAX_CALLS_PER_ACCOUNT", 0, 1<<20)
	c.SylkMaxRoomParticipants = integer("SYLK_MAX_ROOM_PARTICIPANTS", 0, 1<<20)
	c.MaxStreamsPerUser = integer("SUBSCRIBE_MAX_PER_USER", 0, 1<<20)
	c.MaxStreams = integer("SUBSCRIBE_MAX", 0, 1<<30)
	c.MaxPendingPerAddr = integer("CONNECT_MAX_PENDING_PER_ADDR", 0, 1<<20)
	c.MaxPending = integer("CONNECT_MAX_PENDING", 0, 1<<30)
	c.HTTPReadHeader = duration("HTTP_READ_HEADER_TIMEOUT")
	c.HTTPRead = duration("HTTP_READ_TIMEOUT")
	c.HTTPWrite = duration("HTTP_WRITE_TIMEOUT")
	c.HTTPIdle = duration("HTTP_IDLE_TIMEOUT")
	for _, o := range splitList(get("ALLOWED_ORIGINS")) {
		if u, err := url.Parse(o); o != "*" && (err != nil || u.Scheme == "" || u.Host == "") {
			bad("ALLOWED_ORIGINS", fmt.Errorf("%q is not an origin such as https://app.example.org", o))
			continue
		}
		c.Origins = append(c.Origins, o)
	}
	if dev && len(c.Origins) == 0 {
		c.Origins = []string{"*"}
	}
	c.JWTPublicKey = get("AUTH_JWT_PUBLIC_KEY")
	c.TLSCert, c.TLSKey = get("TLS_CERT"), get("TLS_KEY")
	if err := checkTLSSettings(c.TLSCert, c.TLSKey); err != nil {
		errs = append(errs, err)
	}
	if dev {
		c.DevOverrides = devOverrides(getenv)
	}
	var turnErr error
	if c.TURN, turnErr = loadTURN(get, bad, duration, integer); turnErr != nil {
		errs = append(errs, turnErr)
	}
	if dev {
		if names := devRefusals(getenv); names != nil {
			errs = append(errs, fmt.Errorf("-dev refuses %s: -dev lets everyone join every conversation, takes identities from query parameters and serves the demo's bites without a token, so it would silently override them; unset them (environment or .env file) or run without -dev", strings.Join(names, " and ")))
		}
	} else if c.JWTPublicKey != "" {
		if _, err := claim.LoadRSAPublicKey(c.JWTPublicKey); err != nil {
			bad("AUTH_JWT_PUBLIC_KEY", err)
		}
	}
	return c, errors.Join(errs...)
}

// devRefusals names, with their values, the security settings given
// explicitly that -dev would override: PERMISSIONS_HOST other than
// allow-all, and AUTH_JWT_PUBLIC_KEY. -dev refuses to start with any.
func devRefusals(getenv func(string) string) []string {
	var names []string
	if v := strings.TrimSpace(getenv("PERMISSIONS_HOST")); v != "" && v != "allow-all" {
		names = append(names, fmt.Sprintf("PERMISSIONS_HOST=%q", v))
	}
	if v := strings.TrimSpace(getenv("AUTH_JWT_PUBLIC_KEY")); v != "" {
		names = append(names, fmt.Sprintf("AUTH_JWT_PUBLIC_KEY=%q", v))
	}
	return names
}

// defaultInt is the default of the integer setting name, from settings;
// -1 when it has none.
func defaultInt(name string) int {
	for _, s := range settings {
		if s.name == name {
			if n, err := strconv.Atoi(s.def); err == nil {
				return n
			}
		}
	}
	return -1
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
