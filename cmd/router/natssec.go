package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// natsSecurity is how the router authenticates to an external NATS and
// checks it: a credentials file (NATS accounts: a user JWT and its nkey
// seed) and TLS (the CA that signed the servers' certificates, and a
// client certificate for servers that verify clients). Relayed media is
// plain RTP inside NATS: see docs/operations.md.
type natsSecurity struct {
	Creds             string // NATS_CREDS
	CA                string // NATS_TLS_CA
	CertFile, KeyFile string // NATS_TLS_CERT, NATS_TLS_KEY
}

// any reports whether a setting is given.
func (s natsSecurity) any() bool {
	return s.Creds != "" || s.CA != "" || s.CertFile != "" || s.KeyFile != ""
}

// check validates the files now, so that a wrong one stops the router at
// start with one line naming the setting and the file, rather than as
// connection retries. external is false with NATS=embedded, where the
// settings mean nothing.
func (s natsSecurity) check(external bool) error {
	if !s.any() {
		return nil
	}
	if !external {
		return errors.New("NATS_CREDS and NATS_TLS_* secure the connection to an external NATS: NATS=embedded has none (set NATS to the servers' URLs, or unset them)")
	}
	var errs []error
	if s.Creds != "" {
		if err := checkCreds(s.Creds); err != nil {
			errs = append(errs, fmt.Errorf("NATS_CREDS=%q: %w", s.Creds, err))
		}
	}
	if s.CA != "" {
		b, err := os.ReadFile(s.CA)
		if err == nil && !x509.NewCertPool().AppendCertsFromPEM(b) {
			err = errors.New("no PEM certificate in it")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("NATS_TLS_CA=%q: %w", s.CA, err))
		}
	}
	switch {
	case s.CertFile == "" && s.KeyFile == "":
	case s.KeyFile == "":
		errs = append(errs, errors.New("NATS_TLS_CERT is set without NATS_TLS_KEY: set both or neither"))
	case s.CertFile == "":
		errs = append(errs, errors.New("NATS_TLS_KEY is set without NATS_TLS_CERT: set both or neither"))
	default:
		if _, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile); err != nil {
			errs = append(errs, fmt.Errorf("NATS_TLS_CERT=%q, NATS_TLS_KEY=%q: %w", s.CertFile, s.KeyFile, err))
		}
	}
	return errors.Join(errs...)
}

// checkCreds reads a NATS credentials file: it must hold a user JWT and an
// nkey seed.
func checkCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const what = "not a NATS credentials file (a user JWT and its nkey seed, as nsc writes them)"
	tok, err := nkeys.ParseDecoratedJWT(b)
	if err == nil {
		_, err = jwt.DecodeUserClaims(tok)
	}
	if err != nil {
		return fmt.Errorf("%s: user JWT: %w", what, err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	kp.Wipe()
	return nil
}

// options returns the nats.go options of the settings. The files are read
// again at every (re)connect: rotated credentials and certificates are
// picked up without a restart.
func (s natsSecurity) options() []nats.Option {
	var opts []nats.Option
	if s.Creds != "" {
		opts = append(opts, nats.UserCredentials(s.Creds))
	}
	if s.CA != "" {
		opts = append(opts, nats.RootCAs(s.CA))
	}
	if s.CertFile != "" {
		opts = append(opts, nats.ClientCert(s.CertFile, s.KeyFile))
	}
	return opts
}
