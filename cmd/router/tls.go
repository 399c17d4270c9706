package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// TLS on LISTEN (TLS_CERT and TLS_KEY, or -dev-tls): HTTPS with HTTP/2 for
// plain requests, and WSS. WebSockets need the HTTP/1.1 upgrade: browsers
// open a separate HTTP/1.1 connection for them, since Go's HTTP/2 server
// does not offer extended CONNECT (RFC 8441) unless GODEBUG=http2xconnect=1,
// which the router must not be run with. SSE streams (/subscribe, the demo
// feed) work over either. METRICS_LISTEN stays plain HTTP: it is meant for
// a private address that Prometheus and the orchestrator's probes reach.

// devCertValidity is how long a -dev-tls certificate is valid; a new one is
// made at every start.
const devCertValidity = 30 * 24 * time.Hour

// certStore holds the certificate LISTEN serves. Reload swaps it
// atomically: connections in progress keep the one they negotiated.
type certStore struct {
	certFile, keyFile string // "" for a -dev-tls certificate, which is never reloaded
	log               *slog.Logger
	cert              atomic.Pointer[tls.Certificate]
}

// newCertStore loads TLS_CERT and TLS_KEY, or makes the -dev-tls
// certificate; nil when the router serves plain HTTP.
func newCertStore(cfg config, log *slog.Logger) (*certStore, error) {
	s := &certStore{certFile: cfg.TLSCert, keyFile: cfg.TLSKey, log: log}
	switch {
	case cfg.DevTLS:
		c, err := devCertificate(devCertNames())
		if err != nil {
			return nil, fmt.Errorf("-dev-tls: %w", err)
		}
		s.cert.Store(c)
		log.Info("-dev-tls: serving a self-signed certificate; check its fingerprint in the browser before accepting it",
			"sha256", fingerprint(c.Leaf), "names", strings.Join(certNames(c.Leaf), ","), "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	case cfg.TLSCert != "":
		c, err := loadPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, err
		}
		s.cert.Store(c)
		log.Info("serving TLS", "cert", cfg.TLSCert, "subject", c.Leaf.Subject.String(), "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339), "sha256", fingerprint(c.Leaf))
		if time.Now().After(c.Leaf.NotAfter) {
			log.Warn("TLS_CERT has expired: browsers will refuse it", "cert", cfg.TLSCert, "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	default:
		return nil, nil
	}
	return s, nil
}

// tlsConfig returns the server's TLS configuration: the current
// certificate, TLS 1.2 or newer. http.Server.ServeTLS adds h2 and
// http/1.1 to its NextProtos.
func (s *certStore) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}

// reload reads TLS_CERT and TLS_KEY again (on SIGHUP). A pair that cannot
// be loaded leaves the current certificate in place and is logged as one
// error; new handshakes get the new certificate at once.
func (s *certStore) reload() error {
	if s.certFile == "" {
		return nil
	}
	c, err := loadPair(s.certFile, s.keyFile)
	if err != nil {
		s.log.Error("TLS certificate not reloaded: keeping the previous one", "err", err)
		return err
	}
	s.cert.Store(c)
	s.log.Info("TLS certificate reloaded", "cert", s.certFile, "subject", c.Leaf.Subject.String(), "not_after", c.Leaf.NotAfter.UTC().Format(time.RFC3339), "sha256", fingerprint(c.Leaf))
	return nil
}

// loadPair reads a PEM certificate (chain) and its private key; the error
// names the setting at fault.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_KEY: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		switch msg := err.Error(); {
		case strings.Contains(msg, "certificate input"):
			return nil, fmt.Errorf("TLS_CERT %s: %w", certFile, err)
		case strings.Contains(msg, "key input") || strings.Contains(msg, "parse private key"):
			return nil, fmt.Errorf("TLS_KEY %s: %w", keyFile, err)
		}
		return nil, fmt.Errorf("TLS_CERT %s and TLS_KEY %s: %w", certFile, keyFile, err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return nil, fmt.Errorf("TLS_CERT %s: %w", certFile, err)
		}
	}
	return &c, nil
}

// checkTLSSettings checks at configuration time that TLS_CERT and TLS_KEY
// come together and load as a pair.
func checkTLSSettings(certFile, keyFile string) error {
	switch {
	case certFile == "" && keyFile == "":
		return nil
	case certFile == "":
		return errors.New("TLS_KEY is set without TLS_CERT: set both or neither")
	case keyFile == "":
		return errors.New("TLS_CERT is set without TLS_KEY: set both or neither")
	}
	_, err := loadPair(certFile, keyFile)
	return err
}

// checkDevTLS checks the -dev-tls flag against the other settings.
func checkDevTLS(cfg config) error {
	switch {
	case !cfg.DevTLS:
		return nil
	case !cfg.Dev:
		return errors.New("-dev-tls needs -dev (a deployment sets TLS_CERT and TLS_KEY)")
	case cfg.TLSCert != "":
		return errors.New("-dev-tls and TLS_CERT/TLS_KEY are exclusive: unset one")
	}
	return nil
}

// devCertNames returns the names the -dev-tls certificate is for:
// localhost, the host name, loopback and every address of the host's
// interfaces that is up (link-local ones aside: browsers do not use them in
// URLs).
func devCertNames() (dns []string, ips []net.IP) {
	dns = []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
		dns = append(dns, h)
	}
	ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, ip := range hostIPs() {
		if !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	return dns, ips
}

// hostIPs returns the addresses of the host's interfaces that are up,
// link-local ones aside.
func hostIPs() []net.IP {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var ips []net.IP
	for _, i := range ifs {
		if i.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := i.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			n, ok := a.(*net.IPNet)
			if !ok || n.IP.IsLinkLocalUnicast() || n.IP.IsLinkLocalMulticast() {
				continue
			}
			ips = append(ips, n.IP)
		}
	}
	return ips
}

// devCertificate makes a self-signed ECDSA P-256 certificate for the given
// names, valid from an hour ago (clock skew) for devCertValidity.
func devCertificate(dns []string, ips []net.IP) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Beep router -dev-tls", Organization: []string{"Beep router (development)"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// fingerprint returns the SHA-256 fingerprint of a certificate as browsers
// show it: upper-case hex bytes separated by colons.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// certNames lists a certificate's DNS names and IP addresses.
func certNames(c *x509.Certificate) []string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// serve serves LISTEN, over TLS when a certificate is configured.
func (a *app) serve() error {
	if a.srv.TLSConfig != nil {
		return a.srv.ServeTLS(a.ln, "", "")
	}
	return a.srv.Serve(a.ln)
}

// scheme is the URL scheme of LISTEN: https or http.
func (a *app) scheme() string {
	if a.certs != nil {
		return "https"
	}
	return "http"
}

// reload re-reads what SIGHUP re-reads: the TLS certificate and the Sylk
// accounts file. A file that cannot be loaded keeps what was in use.
func (a *app) reload() error {
	var errs []error
	if a.certs != nil {
		errs = append(errs, a.certs.reload())
	}
	if a.sylk != nil {
		errs = append(errs, a.sylk.ReloadAccounts())
	}
	return errors.Join(errs...)
}
