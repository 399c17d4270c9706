package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// needBrowser skips the test unless chromium and the named programs are
// installed and the network can be kept on loopback.
func needBrowser(t *testing.T, tools ...string) {
	t.Helper()
	for _, n := range append([]string{"chromium"}, tools...) {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (CI: apt-get install -y chromium espeak-ng sox opus-tools): %v", n, err)
		}
	}
	if noIsolation != nil {
		t.Skipf("cannot run chromium in a loopback-only network namespace (%v): it would gather ICE candidates on this machine's other addresses; set %s=1 to run on the host network anyway", noIsolation, envHostNetwork)
	}
}

// harnessJS runs before every page script. It keeps WebRTC on loopback and
// the microphone deterministic without changing the pages themselves:
//   - peer connections get no STUN/TURN servers (the seed README's JavaScript
//     names a public STUN server, and nothing may leave loopback);
//   - an SDP sent on a WebSocket keeps only its 127.0.0.1 UDP candidates, so
//     the router checks no other address of this machine;
//   - getUserMedia gets audio with echo cancellation, noise suppression and
//     automatic gain control off;
//   - window.__gumAt and window.__connectedAt record when getUserMedia was
//     called and when the first peer connection connected (Date.now()).
const harnessJS = `(() => {
  const Native = window.RTCPeerConnection;
  class LoopbackPeerConnection extends Native {
    constructor(config, ...rest) {
      super(Object.assign({}, config || {}, { iceServers: [] }), ...rest);
      this.addEventListener('connectionstatechange', () => {
        if (this.connectionState === 'connected' && !window.__connectedAt) window.__connectedAt = Date.now();
      });
    }
  }
  window.RTCPeerConnection = LoopbackPeerConnection;

  const keepLoopback = (sdp) => sdp.split('\r\n').filter((line) => {
    if (!line.startsWith('a=candidate:')) return true;
    const f = line.split(' ');
    return f[2].toLowerCase() === 'udp' && f[4] === '127.0.0.1';
  }).join('\r\n');
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === 'string' && data.includes('a=candidate:')) data = keepLoopback(data);
    return send.call(this, data);
  };

  const md = navigator.mediaDevices;
  const gum = md.getUserMedia.bind(md);
  const raw = { echoCancellation: false, noiseSuppression: false, autoGainControl: false };
  md.getUserMedia = (c = {}) => {
    if (c.audio) c = Object.assign({}, c, { audio: Object.assign(typeof c.audio === 'object' ? c.audio : {}, raw) });
    window.__gumAt = Date.now();
    return gum(c);
  };
})();`

// browser is one headless chromium process with a fake microphone.
type browser struct {
	t      *testing.T
	name   string
	ctx    context.Context // the first tab's context: the browser
	cancel context.CancelFunc
	wg     sync.WaitGroup // console readers
	mu     sync.Mutex
	logs   []string
	done   bool
}

// newBrowser starts chromium whose fake microphone plays wav (append
// "%noloop" to play it once). It is closed at cleanup. It may be called from
// any goroutine.
func newBrowser(t *testing.T, name, wav string) (*browser, error) {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath("chromium"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		// Name resolution: none needed, none wanted.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		// Media.
		chromedp.Flag("use-fake-ui-for-media-stream", true),
		chromedp.Flag("use-fake-device-for-media-stream", true),
		chromedp.Flag("use-file-for-fake-audio-capture", wav),
		chromedp.Flag("allow-loopback-in-peer-connection", true),
		chromedp.Flag("disable-features", "WebRtcHideLocalIpsWithMdns,Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.WindowSize(1200, 900),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	b := &browser{t: t, name: name}
	ctx, cancel := chromedp.NewContext(actx)
	b.ctx = ctx
	b.cancel = func() {
		_ = chromedp.Cancel(ctx)
		cancel()
		acancel()
	}
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		b.cancel()
		return nil, fmt.Errorf("start chromium %s: %w", name, err)
	}
	b.listen(ctx, name)
	t.Cleanup(b.close)
	return b, nil
}

func (b *browser) close() {
	b.cancel()
	b.wg.Wait()
	b.mu.Lock()
	b.done = true
	logs := b.logs
	b.mu.Unlock()
	if len(logs) > 0 {
		saveArtifact(b.t, "console-"+sanitize(b.t.Name())+"-"+b.name+".log", []byte(strings.Join(logs, "\n")+"\n"))
		if b.t.Failed() {
			b.t.Logf("%s console:\n%s", b.name, strings.Join(logs, "\n"))
		}
	}
}

// listen records a tab's console messages and exceptions until ctx ends.
func (b *browser) listen(ctx context.Context, tab string) {
	msgs := chromedp.Console(ctx)
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			line := fmt.Sprintf("%s %s %s", m.Time.Format("15:04:05.000"), tab, m.String())
			b.mu.Lock()
			if !b.done && len(b.logs) < 2000 {
				b.logs = append(b.logs, line)
			}
			b.mu.Unlock()
		}
	}()
}

// tab is one page.
type tab struct {
	b      *browser
	name   string
	ctx    context.Context
	cancel context.CancelFunc
}

// open opens url in a new tab (the browser's first tab for the first call)
// with the harness script installed.
func (b *browser) open(name, url string, first bool) (*tab, error) {
	ctx, cancel := b.ctx, context.CancelFunc(nil)
	if !first {
		ctx, cancel = chromedp.NewContext(b.ctx)
		b.listen(ctx, name)
	}
	_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: harnessJS})
	if err == nil {
		err = chromedp.Do(ctx, chromedp.Navigate(url))
	}
	if err != nil {
		if cancel != nil {
			cancel()
		}
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	return &tab{b: b, name: name, ctx: ctx, cancel: cancel}, nil
}

// eval evaluates a JavaScript expression (awaiting a promise) and decodes
// its JSON value into out.
func (tb *tab) eval(timeout time.Duration, expr string, out any) error {
	ctx, cancel := context.WithTimeout(tb.ctx, timeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		return fmt.Errorf("%s: %w", tb.name, err)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// rtcStats is what statsJS reports of a peer connection.
type rtcStats struct {
	State   string `json:"state"`
	Inbound []struct {
		Mid              string  `json:"mid"`
		PacketsReceived  int     `json:"packetsReceived"`
		TotalAudioEnergy float64 `json:"totalAudioEnergy"`
		AudioLevel       float64 `json:"audioLevel"`
	} `json:"inbound"`
	PacketsSent int    `json:"packetsSent"`
	Local       string `json:"local"`  // selected pair's local address
	Remote      string `json:"remote"` // selected pair's remote address
	Now         int64  `json:"now"`
	GumAt       int64  `json:"gumAt"`
}

// statsJS reports the page's global pc (the seed README's `const pc`).
const statsJS = `(async () => {
  const out = { state: pc.connectionState, inbound: [], packetsSent: 0, local: '', remote: '', now: Date.now(), gumAt: window.__gumAt || 0 };
  const st = await pc.getStats();
  st.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'audio') {
      out.inbound.push({ mid: String(r.mid), packetsReceived: r.packetsReceived || 0, totalAudioEnergy: r.totalAudioEnergy || 0, audioLevel: r.audioLevel || 0 });
    } else if (r.type === 'outbound-rtp' && r.kind === 'audio') {
      out.packetsSent += r.packetsSent || 0;
    } else if (r.type === 'transport' && r.selectedCandidatePairId) {
      const p = st.get(r.selectedCandidatePairId);
      if (p) {
        out.local = (st.get(p.localCandidateId) || {}).address || '';
        out.remote = (st.get(p.remoteCandidateId) || {}).address || '';
      }
    }
  });
  out.inbound.sort((a, b) => a.mid.localeCompare(b.mid));
  return out;
})()`

func (tb *tab) stats() (rtcStats, error) {
	var s rtcStats
	err := tb.eval(5*time.Second, statsJS, &s)
	return s, err
}

func (s rtcStats) packets() (n int) {
	for _, in := range s.Inbound {
		n += in.PacketsReceived
	}
	return n
}
