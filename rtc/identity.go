package rtc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"github.com/pion/logging"
	"github.com/pion/webrtc/v3"
)

// What every peer of an Engine shares rather than makes: its DTLS
// certificate and pion's loggers. Both are per connection in pion by
// default, and both are the same for every connection: a connected idle
// device paid for an ECDSA key, a self-signed certificate (made, then
// parsed again) and about forty log.Loggers.

// certRenewal is how long the Engine hands out one DTLS certificate before
// making the next. pion's certificates are valid for a month; a day keeps
// any one key in use briefly, and a peer keeps the certificate it started
// with, which stays valid for weeks after.
const certRenewal = 24 * time.Hour

// certificates hands every new peer of an Engine the same DTLS certificate,
// renewed once it is older than renew. Sharing it is what a browser does
// for the connections of one page: the fingerprint in each answer names
// it, and every DTLS handshake still agrees on keys of its own (ECDHE).
type certificates struct {
	renew time.Duration
	now   func() time.Time // time.Now; tests move it

	mu   sync.Mutex
	cert *webrtc.Certificate
	made time.Time
}

// get returns the certificate for a new peer, making one first if there is
// none yet or the current one is due for renewal.
func (c *certificates) get() (webrtc.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.cert != nil && now.Sub(c.made) < c.renew {
		return *c.cert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return webrtc.Certificate{}, fmt.Errorf("DTLS certificate key: %w", err)
	}
	cert, err := webrtc.GenerateCertificate(key)
	if err != nil {
		return webrtc.Certificate{}, fmt.Errorf("DTLS certificate: %w", err)
	}
	c.cert, c.made = cert, now
	return *cert, nil
}

// maxLoggerScopes bounds sharedLoggers' map. pion's scopes are a fixed
// set of names ("ice", "pc", "dtls", …); past the bound, a scope gets a
// logger of its own as it would without sharing.
const maxLoggerScopes = 256

// sharedLoggers is a pion LoggerFactory that makes one logger per scope
// and hands it to every connection: pion asks for a logger per scope per
// component per connection, and a DefaultLeveledLogger is five log.Loggers
// (safe for concurrent use: they write through one locked writer).
type sharedLoggers struct {
	inner logging.LoggerFactory

	mu     sync.Mutex
	scopes map[string]logging.LeveledLogger
}

func newSharedLoggers(inner logging.LoggerFactory) *sharedLoggers {
	return &sharedLoggers{inner: inner, scopes: make(map[string]logging.LeveledLogger)}
}

// NewLogger returns the logger of scope.
func (l *sharedLoggers) NewLogger(scope string) logging.LeveledLogger {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lg, ok := l.scopes[scope]; ok {
		return lg
	}
	lg := l.inner.NewLogger(scope)
	if len(l.scopes) < maxLoggerScopes {
		l.scopes[scope] = lg
	}
	return lg
}
