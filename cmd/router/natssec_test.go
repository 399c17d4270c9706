package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/beepvoice/router/internal/testutil"
)

// testCA is a certificate authority made by the test.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	File string // its PEM certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "beep test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{t: t, dir: t.TempDir(), cert: cert, key: key}
	ca.File = ca.write("ca.crt", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(name, typ string, der []byte) string {
	ca.t.Helper()
	p := filepath.Join(ca.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return p
}

// issue returns the files of a certificate the CA signed for 127.0.0.1,
// for a server or a client.
func (ca *testCA) issue(name string, usage x509.ExtKeyUsage) (certFile, keyFile string) {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatal(err)
	}
	return ca.write(name+".crt", "CERTIFICATE", der), ca.write(name+".key", "PRIVATE KEY", keyDER)
}

// TestNATSTLS: a router connects to a NATS server that takes TLS only and
// verifies client certificates (CA made by the test), with NATS_TLS_CA,
// NATS_TLS_CERT and NATS_TLS_KEY and a nats:// URL; the connection is TLS,
// the server's chain verified, and JetStream works over it (the cluster's
// membership bucket opens and holds a join). A client without a
// certificate is refused by the same server.
func TestNATSTLS(t *testing.T) {
	ca := newTestCA(t)
	srvCert, srvKey := ca.issue("nats", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := ca.issue("router", x509.ExtKeyUsageClientAuth)
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: ca.File, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	ns := testutil.StartNATS(t, testutil.JetStream, func(o *server.Options) {
		o.TLSConfig, o.TLSVerify, o.TLSTimeout = tc, true, 5
	})
	if nc, err := nats.Connect(ns.URL(), nats.NoReconnect(), nats.RootCAs(ca.File)); err == nil {
		nc.Close()
		t.Fatal("the server took a client without a certificate")
	}

	a := startExternalWith(t, ns.URL(), map[string]string{"NATS_TLS_CA": ca.File, "NATS_TLS_CERT": cliCert, "NATS_TLS_KEY": cliKey})
	testutil.Eventually(t, 10*time.Second, "the router connected", a.nc.IsConnected)
	st, err := a.nc.TLSConnectionState()
	if err != nil {
		t.Fatalf("the router's NATS connection is not TLS: %v", err)
	}
	if len(st.VerifiedChains) == 0 || st.VerifiedChains[0][len(st.VerifiedChains[0])-1].Subject.CommonName != "beep test CA" {
		t.Errorf("the server's certificate was not verified against the test CA: %v", st.VerifiedChains)
	}
	if st.Version < tls.VersionTLS12 {
		t.Errorf("TLS version %x", st.Version)
	}
	joinShared(t, a)
}

// startExternalWith starts a router on the external NATS at url with the
// settings of env, every user allowed in every conversation.
func startExternalWith(t *testing.T, url string, env map[string]string) *app {
	t.Helper()
	vars := map[string]string{"LISTEN": "127.0.0.1:0", "ICE_IPS": "127.0.0.1", "NATS": url, "PERMISSIONS_HOST": "allow-all", "JOIN_RATE": "0"}
	for k, v := range env {
		vars[k] = v
	}
	return startApp(t, vars, registry())
}

// joinShared joins alice to conv-1 on a and waits until the join is in the
// cluster's membership bucket, read through a's own NATS connection:
// JetStream works over it.
func joinShared(t *testing.T, a *app) {
	t.Helper()
	js, err := jetstream.New(a.nc)
	if err != nil {
		t.Fatal(err)
	}
	r := &testRouter{t: t, a: a}
	// The router writes joins to the bucket once it has opened it: join
	// until one is there.
	testutil.Eventually(t, 20*time.Second, "alice's join in the shared bucket", func() bool {
		if code := r.join("alice", "conv-1"); code != http.StatusOK {
			t.Fatalf("join: %d", code)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, "beep-memberships")
		if err != nil {
			return false
		}
		e, err := kv.Get(ctx, "m.alice")
		return err == nil && strings.Contains(string(e.Value()), "conv-1")
	})
}

// TestNATSCreds: a router authenticates with NATS_CREDS (a user of an
// account the server's operator trusts, in the file format nsc writes) to
// a server that takes no one else, and uses JetStream there.
func TestNATSCreds(t *testing.T) {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	ojwt, err := jwt.NewOperatorClaims(opub).Encode(okp)
	must(err)
	oc, err := jwt.DecodeOperatorClaims(ojwt)
	must(err)
	akp, err := nkeys.CreateAccount()
	must(err)
	apub, err := akp.PublicKey()
	must(err)
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	must(err)
	ukp, err := nkeys.CreateUser()
	must(err)
	upub, err := ukp.PublicKey()
	must(err)
	useed, err := ukp.Seed()
	must(err)
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	must(err)
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	must(err)
	credsFile := filepath.Join(t.TempDir(), "router.creds")
	must(os.WriteFile(credsFile, creds, 0o600))

	// The server's own (system) account.
	skp, err := nkeys.CreateAccount()
	must(err)
	spub, err := skp.PublicKey()
	must(err)
	sjwt, err := jwt.NewAccountClaims(spub).Encode(okp)
	must(err)

	resolver := &server.MemAccResolver{}
	must(resolver.Store(apub, ajwt))
	must(resolver.Store(spub, sjwt))
	ns := testutil.StartNATS(t, testutil.JetStream, func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{oc}
		o.AccountResolver = resolver
		o.SystemAccount = spub
	})
	if nc, err := nats.Connect(ns.URL(), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("the server took a client without credentials")
	}

	a := startExternalWith(t, ns.URL(), map[string]string{"NATS_CREDS": credsFile})
	testutil.Eventually(t, 10*time.Second, "the router connected", a.nc.IsConnected)
	joinShared(t, a)
}
