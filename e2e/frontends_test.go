package e2e

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The pages of the Sylk and Arbiter front-end tests: plain JavaScript, no
// build step, served by the test (frontendPages).
var (
	//go:embed testdata/sylk.js
	sylkPageJS string
	//go:embed testdata/arbiter.js
	arbiterPageJS string
)

// frontendPages serves the front-end test pages on 127.0.0.1 (a secure
// context for getUserMedia), on a port of its own: an origin other than the
// router's.
//
//	/sylk?ws=ws://…/webrtcgateway/ws                the Sylk client (testdata/sylk.js)
//	/arbiter/<room path>?api=http://…&signal=ws://…  the Arbiter client (testdata/arbiter.js);
//	                                                 its urlPath is location.pathname, as in Arbiter's SDK
//	/blank                                           an empty page
func frontendPages(t *testing.T) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	page := func(w http.ResponseWriter, title, js string, cfg any) {
		c, err := json.Marshal(cfg) // escapes <, > and &: safe inside <script>
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = fmt.Fprintf(w, "<!doctype html><html><head><meta charset=utf-8><title>%s</title></head><body>"+
			"<script>window.CONFIG = %s;</script><script>\n%s</script></body></html>", title, c, js)
	}
	wsURL := func(s string) bool {
		u, err := url.Parse(s)
		return err == nil && (u.Scheme == "ws" || u.Scheme == "wss")
	}
	mux.HandleFunc("/sylk", func(w http.ResponseWriter, r *http.Request) {
		ws := r.URL.Query().Get("ws")
		if !wsURL(ws) {
			http.Error(w, "want ?ws=ws://…", http.StatusBadRequest)
			return
		}
		page(w, "sylk", sylkPageJS, map[string]string{"ws": ws})
	})
	mux.HandleFunc("/arbiter/", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		api, err := url.Parse(q.Get("api"))
		if err != nil || api.Scheme != "http" || !wsURL(q.Get("signal")) {
			http.Error(w, "want ?api=http://…&signal=ws://…", http.StatusBadRequest)
			return
		}
		page(w, "arbiter", arbiterPageJS, map[string]any{
			"api":    q.Get("api"),
			"signal": q.Get("signal"),
			"rtc":    map[string]any{"iceServers": []any{}}, // VITE_RTC_CONFIG on loopback
		})
	})
	mux.HandleFunc("/blank", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte("<!doctype html><title>blank</title>"))
	})
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(mux) // 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

// mediaSample is what one receiving connection has received so far.
type mediaSample struct {
	Name   string  // which page receives whom
	State  string  // connectionState
	Audio  int     // audio packets received
	Energy float64 // totalAudioEnergy of the played audio
	Frames int     // video frames decoded
}

func (m mediaSample) String() string {
	return fmt.Sprintf("%s: %s, %d audio packets, energy %.4f, %d frames decoded", m.Name, m.State, m.Audio, m.Energy, m.Frames)
}

// frontendMinFrames is the growth of framesDecoded that shows video
// flowing: about a second of the fake camera at 15 fps.
const frontendMinFrames = 10

// waitMedia waits until every connection sample returns has audio packets,
// at least minEnergy of audio energy and (if video) decoded frames, then
// until each has received more packets, minEnergy more energy and frontendMinFrames
// more frames since; sample returns an error while the set of connections
// is not yet the one to measure. Each phase may take up to timeout: the
// deadline only stops a test that would otherwise hang.
func waitMedia(timeout time.Duration, video bool, sample func() ([]mediaSample, error)) (first, last map[string]mediaSample, err error) {
	has := func(s mediaSample) error {
		if s.Audio == 0 || s.Energy < minEnergy || (video && s.Frames == 0) {
			return fmt.Errorf("not yet receiving: %v", s)
		}
		return nil
	}
	collect := func(check func(mediaSample) error) (map[string]mediaSample, error) {
		ss, err := sample()
		if err != nil {
			return nil, err
		}
		out := map[string]mediaSample{}
		var errs []string
		for _, s := range ss {
			out[s.Name] = s
			if s.State == "failed" || s.State == "closed" {
				return nil, errStop{fmt.Errorf("%v", s)}
			}
			if err := check(s); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			sort.Strings(errs)
			return out, fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return out, nil
	}
	err = waitFor(timeout, 250*time.Millisecond, func() (err error) {
		first, err = collect(has)
		return err
	})
	if err != nil {
		return first, last, err
	}
	err = waitFor(timeout, 250*time.Millisecond, func() (err error) {
		last, err = collect(func(s mediaSample) error {
			f, ok := first[s.Name]
			switch {
			case !ok:
				return errStop{fmt.Errorf("%s appeared after the first sample", s.Name)}
			case s.Audio <= f.Audio || s.Energy < f.Energy+minEnergy:
				return fmt.Errorf("%s: audio not growing: packets %d → %d, energy %.4f → %.4f", s.Name, f.Audio, s.Audio, f.Energy, s.Energy)
			case video && s.Frames < f.Frames+frontendMinFrames:
				return fmt.Errorf("%s: video not growing: framesDecoded %d → %d", s.Name, f.Frames, s.Frames)
			}
			return nil
		})
		if len(last) != len(first) && err == nil {
			err = fmt.Errorf("%d connections, %d at first", len(last), len(first))
		}
		return err
	})
	return first, last, err
}

// logMedia logs the growth waitMedia measured.
func logMedia(t *testing.T, first, last map[string]mediaSample) {
	t.Helper()
	names := make([]string, 0, len(last))
	for n := range last {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		f, l := first[n], last[n]
		t.Logf("%s: audio packets %d → %d, totalAudioEnergy %.4f → %.4f, framesDecoded %d → %d",
			n, f.Audio, l.Audio, f.Energy, l.Energy, f.Frames, l.Frames)
	}
}

// evalAll runs fn for each tab at once and joins their errors.
func evalAll(tabs []*tab, fn func(*tab) error) error {
	errs := make([]error, len(tabs))
	var wg sync.WaitGroup
	for i, tb := range tabs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(tb)
		}()
	}
	wg.Wait()
	var msgs []string
	for _, err := range errs {
		if err != nil {
			msgs = append(msgs, err.Error())
		}
	}
	if len(msgs) > 0 {
		return fmt.Errorf("%s", strings.Join(msgs, "; "))
	}
	return nil
}

// loopbackPair checks that a connection's selected candidate pair is on
// 127.0.0.1 at both ends.
func loopbackPair(t *testing.T, what, local, remote string) {
	t.Helper()
	if local != "127.0.0.1" || remote != "127.0.0.1" {
		t.Errorf("%s: selected candidate pair %q ↔ %q, want 127.0.0.1 at both ends", what, local, remote)
	}
}

// dumpPagesOnFailure saves, if the test failed, what expr (a JavaScript
// expression, awaited) gives on each tab, as e2e/artifacts/pages-<test>.json.
// Register it after the browser is started: cleanups run last-in first-out,
// so the tabs are still open then.
func dumpPagesOnFailure(t *testing.T, expr string, tabs func() []*tab) {
	t.Helper()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		out := map[string]json.RawMessage{}
		for _, tb := range tabs() {
			var v json.RawMessage
			if err := tb.eval(5*time.Second, expr, &v); err != nil {
				v, _ = json.Marshal(err.Error())
			}
			out[tb.name] = v
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		t.Logf("page states saved in %s", saveArtifact(t, "pages-"+sanitize(t.Name())+".json", b))
	})
}
