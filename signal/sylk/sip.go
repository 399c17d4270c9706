package sylk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// registrar registers accounts somewhere else than the local accounts
// file: the alternative to Server.checkRegistration.
type registrar interface {
	// Register registers aor, authenticating with its HA1, and keeps it
	// registered until ctx ends; then it unregisters it and returns. It
	// calls report with the outcome of the first registration (ok, or the
	// reason "<code> <text>"), and with a reason if the registration is
	// later lost (a refresh failed); after a failure it returns at once.
	// report is called from Register's goroutine, never after it returns.
	Register(ctx context.Context, aor, ha1 string, report func(ok bool, reason string))
	// Close releases the registrar once no Register runs any more.
	Close() error
}

// Defaults of the SIP registration settings.
const (
	DefaultSIPTimeout     = 10 * time.Second
	DefaultSIPExpires     = 600 * time.Second
	DefaultSIPMaxInFlight = 64
	// sipRetries is how many times a failed refresh is tried again before
	// the registration is reported lost.
	sipRetries = 2
)

// Reasons of SIP registrations that did not reach the registrar's answer.
const (
	reasonSIPTimeout = "408 Request Timeout"
	reasonSIPBusy    = "503 Service Unavailable (too many SIP registrations in progress)"
	reasonSIPError   = "503 Service Unavailable (SIP transport error)"
)

// sipRegistrar registers accounts with a SIP registrar over UDP with
// sipgo: REGISTER, the digest challenge answered from the HA1, refreshes
// at half the granted lifetime, REGISTER with Expires: 0 at the end. One
// UDP socket, bound to the address that routes to the registrar, serves
// every registration; each has its own Call-ID and Contact, so that an
// account registered on several sockets has several bindings.
type sipRegistrar struct {
	log      *slog.Logger
	ua       *sipgo.UserAgent
	client   *sipgo.Client
	pc       net.PacketConn
	served   chan struct{}
	dest     string // host:port of the registrar
	local    string // host:port of our socket, for Contact
	timeout  time.Duration
	expires  time.Duration
	inFlight chan struct{} // one token per REGISTER transaction in flight
	closed   atomic.Bool
}

// parseRegistrar reads a registrar address: sip:host[:port][;transport=udp].
func parseRegistrar(s string) (dest string, err error) {
	var u sip.Uri
	if err := sip.ParseUri(s, &u); err != nil {
		return "", fmt.Errorf("sylk SIP registrar %q: %w", s, err)
	}
	if !strings.EqualFold(u.Scheme, "sip") || u.Host == "" || u.User != "" {
		return "", fmt.Errorf("sylk SIP registrar %q: want sip:host[:port][;transport=udp]", s)
	}
	if u.UriParams != nil {
		if t, ok := u.UriParams.Get("transport"); ok && !strings.EqualFold(t, "udp") {
			return "", fmt.Errorf("sylk SIP registrar %q: transport %q not supported (only udp)", s, t)
		}
	}
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return net.JoinHostPort(u.Host, strconv.Itoa(port)), nil
}

// newSIPRegistrar starts a SIP user agent for registrations with the
// registrar at uri. timeout bounds one transaction; expires is the
// registration lifetime asked for; maxInFlight bounds the REGISTER
// transactions in flight.
func newSIPRegistrar(uri string, timeout, expires time.Duration, maxInFlight int, log *slog.Logger) (*sipRegistrar, error) {
	dest, err := parseRegistrar(uri)
	if err != nil {
		return nil, err
	}
	// The local address that routes to the registrar (no packet is sent).
	probe, err := net.Dial("udp", dest)
	if err != nil {
		return nil, fmt.Errorf("sylk SIP registrar %s: no route: %w", dest, err)
	}
	ip := probe.LocalAddr().(*net.UDPAddr).IP
	_ = probe.Close()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return nil, fmt.Errorf("sylk SIP: listen: %w", err)
	}
	slog := log.With("sip", "registrar")
	ua, err := sipgo.NewUA(
		sipgo.WithUserAgent("beep-router"),
		sipgo.WithUserAgentHostname(ip.String()),
		sipgo.WithUserAgentTransportLayerOptions(sip.WithTransportLayerLogger(slog)),
		sipgo.WithUserAgentTransactionLayerOptions(sip.WithTransactionLayerLogger(slog),
			sip.WithTransactionLayerUnhandledResponseHandler(func(res *sip.Response) {
				// A retransmitted answer to a transaction already ended.
				slog.Debug("sylk SIP response without a transaction", "status", res.StatusCode)
			})),
	)
	if err != nil {
		_ = pc.Close()
		return nil, fmt.Errorf("sylk SIP user agent: %w", err)
	}
	client, err := sipgo.NewClient(ua, sipgo.WithClientConnectionAddr(pc.LocalAddr().String()), sipgo.WithClientLogger(slog))
	if err != nil {
		_ = ua.Close()
		_ = pc.Close()
		return nil, fmt.Errorf("sylk SIP client: %w", err)
	}
	if maxInFlight <= 0 {
		maxInFlight = DefaultSIPMaxInFlight
	}
	r := &sipRegistrar{log: slog, ua: ua, client: client, pc: pc, served: make(chan struct{}), dest: dest,
		local: pc.LocalAddr().String(), timeout: timeout, expires: expires, inFlight: make(chan struct{}, maxInFlight)}
	// The transport layer lists the socket as the connection of our
	// address before it first reads it: until then a request would try to
	// bind the address again.
	listening := &readSignal{PacketConn: pc, reading: make(chan struct{})}
	go func() {
		defer close(r.served)
		_ = ua.TransportLayer().ServeUDP(listening)
	}()
	select {
	case <-listening.reading:
	case <-r.served:
		_ = ua.Close()
		_ = pc.Close()
		return nil, fmt.Errorf("sylk SIP: the user agent did not serve %s", r.local)
	}
	slog.Info("sylk SIP registration enabled", "registrar", dest, "local", r.local, "expires", expires, "timeout", timeout)
	return r, nil
}

// readSignal is a PacketConn that closes reading when it is first read.
type readSignal struct {
	net.PacketConn
	once    sync.Once
	reading chan struct{}
}

// ReadFrom implements net.PacketConn.
func (p *readSignal) ReadFrom(b []byte) (int, net.Addr, error) {
	p.once.Do(func() { close(p.reading) })
	return p.PacketConn.ReadFrom(b)
}

// Close stops the user agent and its socket.
func (r *sipRegistrar) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.ua.Close()
	if cerr := r.pc.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = errors.Join(err, cerr)
	}
	<-r.served
	return err
}

// binding is one registration of an account: its Call-ID, CSeq and
// Contact stay for its lifetime (RFC 3261 §10.2.4).
type binding struct {
	r       *sipRegistrar
	aor     string
	user    string
	domain  string
	ha1     string
	callID  string
	fromTag string
	contact string // the user part of our Contact: unique per binding
	cseq    uint32
	log     *slog.Logger
}

// Register implements registrar.
func (r *sipRegistrar) Register(ctx context.Context, aor, ha1 string, report func(ok bool, reason string)) {
	user, domain, _ := strings.Cut(aor, "@")
	b := &binding{r: r, aor: aor, user: user, domain: domain, ha1: ha1, callID: newID(), fromTag: sip.GenerateTagN(16),
		contact: strings.ToLower(newID()), log: r.log.With("account", aor)}
	granted, reason := b.register(ctx, r.expires)
	if ctx.Err() != nil {
		// Unregistered (or the socket closed) meanwhile: unless the
		// registrar refused, it may hold a binding all the same.
		if reason == "" || reason == reasonSIPTimeout {
			b.unregister()
		}
		return
	}
	if reason != "" {
		b.log.Info("sylk SIP registration failed", "reason", reason)
		report(false, reason)
		return
	}
	b.log.Info("sylk SIP registration done", "expires", granted)
	report(true, "")
	for {
		t := time.NewTimer(refreshDelay(granted))
		select {
		case <-ctx.Done():
			t.Stop()
			b.unregister()
			return
		case <-t.C:
		}
		for try := 0; ; try++ {
			granted, reason = b.register(ctx, r.expires)
			if reason == "" || ctx.Err() != nil || try == sipRetries {
				break
			}
			b.log.Info("sylk SIP refresh failed: trying again", "reason", reason, "try", try+1)
		}
		if ctx.Err() != nil {
			b.unregister()
			return
		}
		if reason != "" {
			b.log.Warn("sylk SIP registration lost: refresh failed", "reason", reason)
			report(false, reason)
			return
		}
		b.log.Debug("sylk SIP registration refreshed", "expires", granted)
	}
}

// refreshDelay is when a registration granted for d is refreshed: at half
// its lifetime, at least a second from now.
func refreshDelay(d time.Duration) time.Duration {
	return max(d/2, time.Second)
}

// unregister removes the binding (Expires: 0), bounded by the transaction
// timeout; a failure is logged only.
func (b *binding) unregister() {
	if _, reason := b.register(context.Background(), 0); reason != "" {
		b.log.Info("sylk SIP unregistration failed", "reason", reason)
		return
	}
	b.log.Info("sylk SIP unregistered")
}

// request builds one REGISTER of the binding asking for expires.
func (b *binding) request(expires time.Duration) *sip.Request {
	b.cseq++
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: b.domain})
	req.SetDestination(b.r.dest)
	req.SetTransport("UDP")
	aor := sip.Uri{Scheme: "sip", User: b.user, Host: b.domain}
	tag := sip.NewParams()
	tag.Add("tag", b.fromTag)
	from := &sip.FromHeader{Address: aor, Params: tag}
	to := &sip.ToHeader{Address: aor, Params: sip.NewParams()}
	callID := sip.CallIDHeader(b.callID)
	host, port, _ := sip.ParseAddr(b.r.local)
	params := sip.NewParams()
	params.Add("transport", "udp")
	contact := &sip.ContactHeader{Address: sip.Uri{Scheme: "sip", User: b.contact, Host: host, Port: port, UriParams: params}}
	exp := sip.ExpiresHeader(uint32(expires / time.Second))
	req.AppendHeader(from)
	req.AppendHeader(to)
	req.AppendHeader(&callID)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: b.cseq, MethodName: sip.REGISTER})
	req.AppendHeader(contact)
	req.AppendHeader(&exp)
	return req
}

// register sends one REGISTER asking for expires and answers a digest
// challenge once. It returns the lifetime the registrar granted, or the
// reason of the failure ("<code> <text>").
func (b *binding) register(ctx context.Context, expires time.Duration) (time.Duration, string) {
	req := b.request(expires)
	res, reason := b.r.do(ctx, req)
	if reason != "" {
		return 0, reason
	}
	if res.StatusCode == sip.StatusUnauthorized || res.StatusCode == sip.StatusProxyAuthRequired {
		auth, err := b.authorization(req, res)
		if err != nil {
			b.log.Info("sylk SIP challenge not answered", "err", err)
			return 0, statusReason(res)
		}
		req = b.request(expires)
		req.AppendHeader(auth)
		if res, reason = b.r.do(ctx, req); reason != "" {
			return 0, reason
		}
	}
	if !res.IsSuccess() {
		return 0, statusReason(res)
	}
	return b.granted(res, expires), ""
}

// authorization answers the challenge of res to req from the HA1: the
// digest needs md5(user:realm:password), which is the HA1 when the realm
// is the account's domain.
func (b *binding) authorization(req *sip.Request, res *sip.Response) (sip.Header, error) {
	name, answer := "WWW-Authenticate", "Authorization"
	if res.StatusCode == sip.StatusProxyAuthRequired {
		name, answer = "Proxy-Authenticate", "Proxy-Authorization"
	}
	h := res.GetHeader(name)
	if h == nil {
		return nil, fmt.Errorf("%d without %s", res.StatusCode, name)
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		return nil, fmt.Errorf("challenge: %w", err)
	}
	if a := strings.ToUpper(chal.Algorithm); a != "" && a != "MD5" {
		return nil, fmt.Errorf("digest algorithm %q: the HA1 is MD5", chal.Algorithm)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: string(sip.REGISTER), URI: req.Recipient.String(), Username: b.user, A1: b.ha1})
	if err != nil {
		return nil, fmt.Errorf("digest: %w", err)
	}
	return sip.NewHeader(answer, cred.String()), nil
}

// granted returns the lifetime of our binding in a 2xx: the expires
// parameter of our Contact, else the Expires header, else what was asked.
func (b *binding) granted(res *sip.Response, asked time.Duration) time.Duration {
	for _, h := range res.GetHeaders("Contact") {
		c, ok := h.(*sip.ContactHeader)
		if !ok || c.Address.User != b.contact || c.Params == nil {
			continue
		}
		if v, ok := c.Params.Get("expires"); ok {
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				return time.Duration(n) * time.Second
			}
		}
	}
	if h := res.GetHeader("Expires"); h != nil {
		if n, err := strconv.ParseUint(strings.TrimSpace(h.Value()), 10, 32); err == nil {
			return time.Duration(n) * time.Second
		}
	}
	return asked
}

// statusReason is "<code> <reason>" of a response.
func statusReason(res *sip.Response) string {
	return strings.TrimSpace(fmt.Sprintf("%d %s", res.StatusCode, res.Reason))
}

// do runs one transaction, bounded by the timeout and the transactions
// in flight; it returns the final response or the reason it has none.
func (r *sipRegistrar) do(ctx context.Context, req *sip.Request) (*sip.Response, string) {
	select {
	case r.inFlight <- struct{}{}:
	default:
		return nil, reasonSIPBusy
	}
	defer func() { <-r.inFlight }()
	if r.closed.Load() {
		return nil, reasonSIPError
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	res, err := r.client.Do(ctx, req)
	switch {
	case err == nil:
		return res, ""
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, sip.ErrTransactionTimeout):
		return nil, reasonSIPTimeout
	case ctx.Err() != nil:
		return nil, reasonSIPTimeout
	}
	r.log.Info("sylk SIP transaction failed", "err", err)
	return nil, reasonSIPError
}

// sipReg is a socket's SIP registration of one account: stop ends it
// (its goroutine unregisters).
type sipReg struct {
	stop context.CancelFunc
}
