package rtc

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/logging"
	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// TestPionLoggersOnePerScope: every connection asking for a scope's logger
// gets the same one; scopes past the bound still get a logger.
func TestPionLoggersOnePerScope(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	f, ok := e.apis.settings.LoggerFactory.(*sharedLoggers)
	if !ok {
		t.Fatalf("the Engine's pion logger factory is %T, not shared", e.apis.settings.LoggerFactory)
	}
	if v, ok := e.apis.videoSettings.LoggerFactory.(*sharedLoggers); !ok || v != f {
		t.Error("video peers do not share the audio peers' logger factory")
	}
	ice1, ice2, dtls := f.NewLogger("ice"), f.NewLogger("ice"), f.NewLogger("dtls")
	if ice1 != ice2 {
		t.Error("two loggers for scope ice")
	}
	if ice1 == dtls {
		t.Error("scopes ice and dtls share a logger")
	}

	var out bytes.Buffer
	inner := logging.NewDefaultLoggerFactory()
	inner.Writer = &out
	l := newSharedLoggers(inner)
	for i := 0; i < maxLoggerScopes+10; i++ {
		if l.NewLogger("scope"+strconv.Itoa(i)) == nil {
			t.Fatalf("no logger for scope %d", i)
		}
	}
	if len(l.scopes) != maxLoggerScopes {
		t.Errorf("%d scopes kept, want the bound %d", len(l.scopes), maxLoggerScopes)
	}
	l.NewLogger("scope3").Error("shared")
	if !strings.Contains(out.String(), "shared") {
		t.Errorf("the shared logger did not write through the factory's writer: %q", out.String())
	}
}

// TestPeersShareCertificate: the peers of an Engine present one DTLS
// certificate, so their answers carry one fingerprint.
func TestPeersShareCertificate(t *testing.T) {
	e, err := NewEngine(Config{ICEIPs: loopback4})
	if err != nil {
		t.Fatal(err)
	}
	defer closeEngine(t, e)
	var prints []string
	for i, video := range []bool{false, false, true} {
		p, err := e.NewPeer(claim.Claim{UserID: "u", ClientID: "c" + strconv.Itoa(i)}, nopHandler{}, PeerOptions{Video: video})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := p.AddSendRecvTrack(webrtc.RTPCodecTypeAudio); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		offer, err := p.Offer(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		prints = append(prints, fingerprint(t, offer))
	}
	for i, fp := range prints[1:] {
		if fp != prints[0] {
			t.Errorf("peer %d's fingerprint %s differs from peer 0's %s", i+1, fp, prints[0])
		}
	}
}

// fingerprint returns the a=fingerprint value of sdp.
func fingerprint(t *testing.T, sdp string) string {
	t.Helper()
	for _, line := range strings.Split(sdp, "\r\n") {
		if fp, ok := strings.CutPrefix(line, "a=fingerprint:"); ok {
			return fp
		}
	}
	t.Fatalf("no fingerprint in\n%s", sdp)
	return ""
}

// TestCertificatesRotate: the certificate is renewed once it is older
// than the renewal period, and each one is valid well past it.
func TestCertificatesRotate(t *testing.T) {
	now := time.Now()
	c := certificates{renew: certRenewal, now: func() time.Time { return now }}
	first, err := c.get()
	if err != nil {
		t.Fatal(err)
	}
	if exp := first.Expires(); exp.Before(now.Add(7 * certRenewal)) {
		t.Errorf("a new certificate expires at %s, under a week from now", exp)
	}
	now = now.Add(certRenewal - time.Minute)
	same, err := c.get()
	if err != nil {
		t.Fatal(err)
	}
	if !same.Equals(first) {
		t.Error("renewed before its period was over")
	}
	now = now.Add(2 * time.Minute)
	next, err := c.get()
	if err != nil {
		t.Fatal(err)
	}
	if next.Equals(first) {
		t.Error("not renewed after its period")
	}
	f1, _ := first.GetFingerprints()
	f2, _ := next.GetFingerprints()
	if len(f1) == 0 || len(f2) == 0 || f1[0].Value == f2[0].Value {
		t.Errorf("fingerprints %v and %v: want two different ones", f1, f2)
	}
}
