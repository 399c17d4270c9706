package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/claim"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/oggopus"

	"github.com/beepvoice/router/internal/testutil"
)

// checkStream asserts that the packets of one slot form one valid RTP
// stream: one SSRC, sequence numbers without duplicates or reordering and
// timestamps that never go back.
func checkStream(t *testing.T, mid string, pkts []beepclient.Packet) {
	t.Helper()
	for i := 1; i < len(pkts); i++ {
		a, b := pkts[i-1], pkts[i]
		if a.SSRC != b.SSRC {
			t.Fatalf("mid %s: SSRC changed from %d to %d at packet %d", mid, a.SSRC, b.SSRC, i)
		}
		if d := b.SequenceNumber - a.SequenceNumber; d == 0 || d > 100 {
			t.Fatalf("mid %s: sequence jumps from %d to %d at packet %d", mid, a.SequenceNumber, b.SequenceNumber, i)
		}
		if d := int32(b.Timestamp - a.Timestamp); d <= 0 {
			t.Fatalf("mid %s: timestamp goes from %d to %d at packet %d", mid, a.Timestamp, b.Timestamp, i)
		}
	}
}

// heard returns, per speaker id, how many packets c received, and on which
// mids.
func heard(rx map[string][]beepclient.Packet) (count map[byte]int, mids map[byte]map[string]bool) {
	count, mids = map[byte]int{}, map[byte]map[string]bool{}
	for mid, pkts := range rx {
		for _, p := range pkts {
			id := speaker(p)
			count[id]++
			if mids[id] == nil {
				mids[id] = map[string]bool{}
			}
			mids[id][mid] = true
		}
	}
	return count, mids
}

func TestThreeUsersHearEachOther(t *testing.T) {
	r := startRouter(t, nil)
	for _, u := range []string{"alice", "bob", "carol"} {
		r.mustJoin(u, "conv-1")
	}
	// Both framings; every client publishes and receives on two m-lines.
	clients := map[byte]*beepclient.Client{
		'a': r.dial("alice", beepclient.Options{Framing: beepclient.Bare, Publish: true, Receive: 2}),
		'b': r.dial("bob", beepclient.Options{Framing: beepclient.Prefixed, Publish: true, Receive: 2}),
		'c': r.dial("carol", beepclient.Options{Framing: beepclient.Bare, Publish: true, Receive: 2}),
	}
	paceAll(t, 50, loud, clients)

	for id, c := range clients {
		err := c.WaitFor(deadline(t, 10*time.Second), func(rx map[string][]beepclient.Packet) bool {
			count, _ := heard(rx)
			return len(count) >= 2 && count[id] == 0 && minOthers(count, id) >= 40
		})
		rx := c.Received()
		count, mids := heard(rx)
		if err != nil {
			t.Fatalf("client %c heard %v: %v", id, count, err)
		}
		if count[id] != 0 {
			t.Fatalf("client %c received its own audio", id)
		}
		// Two m-lines, two speakers at once: each on its own slot.
		for other, m := range mids {
			if len(m) != 1 {
				t.Fatalf("client %c: speaker %c spread over mids %v", id, other, m)
			}
		}
		if len(rx) != 2 {
			t.Fatalf("client %c: audio on %d mids, want 2", id, len(rx))
		}
		for mid, pkts := range rx {
			checkStream(t, mid, pkts)
		}
	}
}

func minOthers(count map[byte]int, self byte) int {
	m := -1
	for id, n := range count {
		if id != self && (m < 0 || n < m) {
			m = n
		}
	}
	return m
}

func TestSpeakerSwitchKeepsOneStream(t *testing.T) {
	r := startRouter(t, map[string]string{"PIPELINE": writePipeline(t, `
stages:
  - name: permission-gate
  - name: forwarder
    settings: {hangover: 100ms}
`)})
	for _, u := range []string{"alice", "bob", "dave"} {
		r.mustJoin(u, "conv-1")
	}
	a := r.dial("alice", beepclient.Options{Publish: true})
	b := r.dial("bob", beepclient.Options{Publish: true, NoAudioLevel: false})
	d := r.dial("dave", beepclient.Options{Receive: 1})

	// Alice talks while Bob is silent, then the other way round, twice.
	for round := 0; round < 2; round++ {
		for _, turn := range []struct {
			talker, listener *beepclient.Client
			tid, lid         byte
		}{{a, b, 'a', 'b'}, {b, a, 'b', 'a'}} {
			errs := make(chan error, 2)
			go func() { errs <- pace(turn.talker, turn.tid, round*100, 20, loud) }()
			go func() { errs <- pace(turn.listener, turn.lid, round*100, 20, quiet) }()
			for range 2 {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			want := turn.tid
			err := d.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
				for _, pkts := range rx {
					return len(pkts) > 0 && speaker(pkts[len(pkts)-1]) == want
				}
				return false
			})
			if err != nil {
				t.Fatalf("round %d: dave does not hear %c: %v", round, want, err)
			}
		}
	}
	rx := d.Received()
	if len(rx) != 1 {
		t.Fatalf("dave has one slot, got audio on %d mids", len(rx))
	}
	for mid, pkts := range rx {
		checkStream(t, mid, pkts)
		switches := 0
		for i := 1; i < len(pkts); i++ {
			if speaker(pkts[i]) != speaker(pkts[i-1]) {
				switches++
				if !pkts[i].Marker {
					t.Errorf("switch at packet %d without marker bit", i)
				}
			}
		}
		if switches < 3 {
			t.Fatalf("dave's slot switched speakers %d times, want at least 3", switches)
		}
	}
}

func TestMembership(t *testing.T) {
	r := startRouter(t, nil)
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	r.mustJoin("carol", "conv-2")
	bites := r.bites("bite")

	a := r.dial("alice", beepclient.Options{Publish: true, Receive: 1})
	b := r.dial("bob", beepclient.Options{Receive: 1})
	c := r.dial("carol", beepclient.Options{Receive: 1})
	x := r.dial("xavier", beepclient.Options{Publish: true}) // never joins

	paceAll(t, 30, loud, map[byte]*beepclient.Client{'a': a, 'x': x})
	if err := b.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		n, _ := heard(rx)
		return n['a'] >= 25
	}); err != nil {
		t.Fatalf("bob does not hear alice: %v", err)
	}

	// Alice moves to carol's conversation: from the next packet on, only
	// carol hears her.
	r.mustJoin("alice", "conv-2")
	if err := pace(a, 'a', 1000, 30, loud); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
		for _, pkts := range rx {
			for _, p := range pkts {
				if speaker(p) == 'a' && counter(p) >= 1029 {
					return true
				}
			}
		}
		return false
	}); err != nil {
		t.Fatalf("carol does not hear alice after the move: %v", err)
	}
	for _, cl := range []*beepclient.Client{a, b, c} {
		n, _ := heard(cl.Received())
		if n['x'] != 0 {
			t.Fatalf("xavier, who never joined, was forwarded")
		}
	}
	for _, pkts := range b.Received() {
		for _, p := range pkts {
			if counter(p) >= 1000 {
				t.Fatalf("bob received alice's packet %d sent after she moved", counter(p))
			}
		}
	}
	for _, pkts := range c.Received() {
		for _, p := range pkts {
			if counter(p) < 1000 {
				t.Fatalf("carol received alice's packet %d sent before she moved", counter(p))
			}
		}
	}
	// Closing ends the tracks: their bites flush. None may be xavier's.
	a.Close()
	x.Close()
	got := map[string]int{}
	timeout := time.After(10 * time.Second)
	for got["conv-2"] == 0 || got["conv-1"] == 0 {
		select {
		case bt := <-bites:
			if bt.User == "xavier" {
				t.Fatalf("bite from xavier, who never joined")
			}
			got[bt.Key]++
		case <-timeout:
			t.Fatalf("bites by conversation: %v; want alice's in conv-1 and conv-2", got)
		}
	}
}

func TestJoinErrors(t *testing.T) {
	r := startRouter(t, nil)
	r.perms.allow("conv-1", "alice")
	tests := []struct {
		name   string
		user   string
		conv   string
		header string
		method string
		want   int
	}{
		{"allowed", "alice", "conv-1", "", http.MethodPost, http.StatusOK},
		{"denied", "bob", "conv-1", "", http.MethodPost, http.StatusUnauthorized},
		{"permission service fails", "alice", "broken-1", "", http.MethodPost, http.StatusServiceUnavailable},
		{"no claim", "", "conv-1", "-", http.MethodPost, http.StatusBadRequest},
		{"claim not json", "", "conv-1", "nope", http.MethodPost, http.StatusBadRequest},
		{"claim without client", "", "conv-1", `{"userid":"alice"}`, http.MethodPost, http.StatusBadRequest},
		{"GET", "alice", "conv-1", "", http.MethodGet, http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, r.url("/join/"+tt.conv), nil)
			switch tt.header {
			case "":
				req.Header.Set(claim.Header, `{"userid":"`+tt.user+`","clientid":"d1"}`)
			case "-":
			default:
				req.Header.Set(claim.Header, tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tt.want)
			}
			if tt.want == http.StatusOK && len(body) != 0 {
				t.Fatalf("200 with body %q, want empty", body)
			}
		})
	}
}

func TestJoinDeadPermissionService(t *testing.T) {
	r := startRouter(t, map[string]string{"PERMISSIONS_HOST": "http://127.0.0.1:1", "PERMISSIONS_TIMEOUT": "1s"})
	if code := r.join("alice", "conv-1"); code != http.StatusServiceUnavailable {
		t.Fatalf("dead permission service: %d, want 503", code)
	}
}

func TestConnectErrors(t *testing.T) {
	r := startRouter(t, nil)
	noOpus := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
	noAudio := "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=rtpmap:96 VP8/90000\r\n"
	tests := []struct {
		name, msg, reason string
		code              int
	}{
		{"garbage", "hello", "not valid SDP", websocket.CloseUnsupportedData},
		{"framed garbage", "offer::v=0 nope", "not valid SDP", websocket.CloseUnsupportedData},
		{"no opus", noOpus, "does not offer Opus", websocket.CloseUnsupportedData},
		{"no audio", "offer::" + noAudio, "no audio", websocket.CloseUnsupportedData},
		{"bad ice", "ice::{not json", "bad ice", websocket.CloseUnsupportedData},
		{"too large", strings.Repeat("x", 70000), "", websocket.CloseMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			h.Set(claim.Header, `{"userid":"u","clientid":"c"}`)
			ws, _, err := websocket.DefaultDialer.Dial(r.wsURL(), h)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			werr := ws.WriteMessage(websocket.TextMessage, []byte(tt.msg))
			_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err = ws.ReadMessage()
			if tt.code == websocket.CloseMessageTooBig && (werr != nil || isReset(err)) {
				// The router refused the frame from its header and closed
				// before the client finished writing it: TCP reset the
				// connection, so the close frame may be lost. Refused all
				// the same.
				return
			}
			if werr != nil {
				t.Fatal(werr)
			}
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("want a close frame, got %v", err)
			}
			if ce.Code != tt.code || !strings.Contains(ce.Text, tt.reason) {
				t.Fatalf("close %d %q, want %d containing %q", ce.Code, ce.Text, tt.code, tt.reason)
			}
		})
	}
	// A bad claim is refused before the upgrade.
	_, resp, err := websocket.DefaultDialer.Dial(r.wsURL(), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("connect without claim: %v %v, want 400", err, resp)
	}
	// Nothing leaked: every refused offer's peer is gone.
	if err := testutil.Until(deadline(t, 5*time.Second), func() bool { return r.a.rooms.Stats().Peers == 0 }); err != nil {
		t.Fatalf("peers left after refused offers: %+v", r.a.rooms.Stats())
	}
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

func TestBitesOnNATS(t *testing.T) {
	r := startRouter(t, nil)
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	bites := r.bites("bite")
	stores := r.bites("store") // decodes as Bite: checked below as Store
	_ = stores
	a := r.dial("alice", beepclient.Options{Publish: true})
	r.dial("bob", beepclient.Options{Receive: 1})

	// Two utterances of 600 ms split by 800 ms of silence, then a third cut
	// by the end of the track.
	level := func(i int) int {
		if i%70 < 30 {
			return 10
		}
		return 120
	}
	if err := pace(a, 'a', 0, 170, level); err != nil {
		t.Fatal(err)
	}
	a.Close()

	var got []*beeppb.Bite
	timeout := time.After(10 * time.Second)
	for len(got) < 3 {
		select {
		case b := <-bites:
			got = append(got, b)
		case <-timeout:
			t.Fatalf("got %d bites, want 3", len(got))
		}
	}
	for i, b := range got {
		if b.Key != "conv-1" || b.User != "alice" || b.Client != "alice-phone" || b.Format != "ogg-opus" {
			t.Fatalf("bite %d: %+v", i, b)
		}
		if b.Seq != uint64(i) {
			t.Fatalf("bite %d has seq %d", i, b.Seq)
		}
		if b.StartMs/1000 != b.Start || b.StartMs == 0 {
			t.Fatalf("bite %d: start %d s vs %d ms", i, b.Start, b.StartMs)
		}
		if i > 0 && b.StartMs <= got[i-1].StartMs {
			t.Fatalf("bites out of order: %d then %d", got[i-1].StartMs, b.StartMs)
		}
		// 600 ms of speech plus pre-roll and a little tail.
		if b.DurationMs < 600 || b.DurationMs > 900 {
			t.Fatalf("bite %d lasts %d ms, want 600..900", i, b.DurationMs)
		}
		checkOgg(t, b.Data, b.DurationMs)
	}
}

// checkOgg decodes a bite's data with our reader and, when opus-tools is
// installed, with opusinfo and opusdec.
func checkOgg(t *testing.T, data []byte, durationMs uint32) {
	t.Helper()
	rd, err := oggopus.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("bite is not Ogg Opus: %v", err)
	}
	n := 0
	for {
		if _, _, err := rd.Next(); err != nil {
			if err != io.EOF {
				t.Fatalf("bite packet %d: %v", n, err)
			}
			break
		}
		n++
	}
	if want := int(durationMs / 20); n < want {
		t.Fatalf("bite has %d packets, want %d", n, want)
	}
	if _, err := exec.LookPath("opusinfo"); err != nil {
		t.Log("opus-tools not installed: skipping opusinfo/opusdec checks")
		return
	}
	path := filepath.Join(t.TempDir(), "bite.opus")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("opusinfo", path).CombinedOutput()
	if err != nil || bytes.Contains(bytes.ToLower(out), []byte("warning")) {
		t.Fatalf("opusinfo: %v\n%s", err, out)
	}
	if out, err := exec.Command("opusdec", "--quiet", path, filepath.Join(t.TempDir(), "bite.wav")).CombinedOutput(); err != nil {
		t.Fatalf("opusdec: %v\n%s", err, out)
	}
}

// TestShardedFanout splits every fan-out (shard_min 1) across the cores:
// each receiver still gets all of the speaker's packets, in order, on one
// continuous stream.
func TestShardedFanout(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("sharding needs two cores")
	}
	r := startRouter(t, map[string]string{"PIPELINE": writePipeline(t, "stages:\n  - name: permission-gate\n  - name: forwarder\n    settings: {shard_min: 1}\n")})
	const listeners, sent = 6, 50
	r.mustJoin("speaker", "conv-1")
	a := r.dial("speaker", beepclient.Options{Publish: true})
	var ls []*beepclient.Client
	for i := range listeners {
		u := fmt.Sprintf("listener%d", i)
		r.mustJoin(u, "conv-1")
		ls = append(ls, r.dial(u, beepclient.Options{Receive: 1}))
	}
	if err := pace(a, 'a', 0, sent, loud); err != nil {
		t.Fatal(err)
	}
	for i, l := range ls {
		if err := l.WaitFor(deadline(t, 5*time.Second), func(rx map[string][]beepclient.Packet) bool {
			n, _ := heard(rx)
			return n['a'] >= sent
		}); err != nil {
			t.Fatalf("listener %d: %v", i, err)
		}
		for _, pkts := range l.Received() {
			for j := 1; j < len(pkts); j++ {
				if pkts[j].SequenceNumber != pkts[j-1].SequenceNumber+1 || counter(pkts[j]) != counter(pkts[j-1])+1 {
					t.Errorf("listener %d: packet %d (counter %d) after %d (counter %d)", i, pkts[j].SequenceNumber, counter(pkts[j]), pkts[j-1].SequenceNumber, counter(pkts[j-1]))
				}
			}
		}
	}
	if n := r.a.pipe.Stats()["forwarder"]["sharded"]; n == 0 {
		t.Error("no fan-out was split across cores")
	}
}
