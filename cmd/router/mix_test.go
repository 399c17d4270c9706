package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/beeppb"
	"github.com/beepvoice/router/internal/beepclient"
	"github.com/beepvoice/router/internal/testmedia"
	"github.com/beepvoice/router/internal/testutil"
	"github.com/beepvoice/router/oggopus"
)

// The mixing stage end to end (issue 17): real pion clients over loopback
// publish espeak-ng speech (opusenc packets) to a router on its default
// pipeline, and what devices with too few slots receive is decoded and
// cross-correlated against each source.

// talker is one speaking client and its speech fixture.
type talker struct {
	c *beepclient.Client
	s testmedia.Speech
}

// talk sends frames [from, to) of every talker's speech, all in lockstep
// every 20 ms, loud (so that each is an active speaker).
func talk(t *testing.T, from, to int, ts ...talker) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := from; i < to; i++ {
		for _, tk := range ts {
			if err := tk.c.Send(tk.s.Packets[i%len(tk.s.Packets)], 10); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		<-tick.C
	}
}

// stream returns the packets received on one m-line, in sequence order.
func stream(c *beepclient.Client, mid string) []beepclient.Packet {
	pkts := slices.Clone(c.Received()[mid])
	slices.SortStableFunc(pkts, func(a, b beepclient.Packet) int {
		return int(int16(a.SequenceNumber - b.SequenceNumber))
	})
	return pkts
}

// mids returns the m-lines a client received on, sorted.
func mids(c *beepclient.Client) []string {
	var out []string
	for mid := range c.Received() {
		out = append(out, mid)
	}
	slices.Sort(out)
	return out
}

// decodeStream checks that pkts are one continuous stream (consecutive
// sequence numbers) and decodes it, each packet at its place on the RTP
// clock: a frame the mixer skipped (it counts them) is concealed there, so
// that what follows stays aligned with the sources.
func decodeStream(t *testing.T, pkts []beepclient.Packet) []float32 {
	t.Helper()
	var payloads [][]byte
	for i, p := range pkts {
		if i > 0 {
			q := pkts[i-1]
			if p.SequenceNumber != q.SequenceNumber+1 {
				t.Errorf("sequence gap: %d after %d", p.SequenceNumber, q.SequenceNumber)
			}
			// At most a second of missing frames: a longer jump is a
			// switch of source, not a skip.
			if gap := int32(p.Timestamp-q.Timestamp)/960 - 1; gap > 0 && gap <= 50 {
				for range gap {
					payloads = append(payloads, nil)
				}
			}
		}
		payloads = append(payloads, p.Payload)
	}
	return testmedia.DecodeOpus(t, payloads)
}

// sourcePayloads indexes every packet the talkers may send.
func sourcePayloads(ts ...talker) map[string]bool {
	m := map[string]bool{}
	for _, tk := range ts {
		for _, p := range tk.s.Packets {
			m[string(p)] = true
		}
	}
	return m
}

// mixerStats returns the mixer stage's counts.
func mixerStats(r *testRouter) map[string]uint64 { return r.a.pipe.Stats()["mixer"] }

// waitPackets waits until c has received at least n packets on its m-lines
// in total. Under the race detector, where the mixer skips the frames it
// has no time for (how many depends on the machine's load, not on the
// router), it settles for minPackets(n) once the wait is over.
func waitPackets(t *testing.T, c *beepclient.Client, n int) {
	t.Helper()
	const wait = 30 * time.Second
	total := func(rx map[string][]beepclient.Packet) int {
		sum := 0
		for _, p := range rx {
			sum += len(p)
		}
		return sum
	}
	err := c.WaitFor(deadline(t, wait), func(rx map[string][]beepclient.Packet) bool { return total(rx) >= n })
	if err == nil {
		return
	}
	got := total(c.Received())
	if testutil.Race && got >= minPackets(n) {
		t.Logf("race detector: %d packets of %d received", got, n)
		return
	}
	t.Fatalf("%d packets received, want %d: %v", got, n, err)
}

// present is the correlation above which a source counts as heard in a
// mix. Under the race detector an Opus encode takes 7.5 ms instead of
// 0.3 (BenchmarkEncodeMix): four mixes no longer fit in 20 ms, the mixer
// skips frames to keep up (frames_skipped) and each skip shifts the rest
// of the stream against the source, so the correlation at one lag drops;
// there the tests ask less of it. A speaker's own voice must stay absent
// either way.
func present() float64 {
	if testutil.Race {
		return 0.08
	}
	return 0.25
}

// overloaded reports whether the mixer fell so far behind (it skipped
// more than one frame in ten) that what listeners hear can no longer be
// compared with the sources. Only the race detector may make it so: then
// the tests say so and judge presence and levels no more; without it, it
// is an error.
func overloaded(t *testing.T, st map[string]uint64) bool {
	t.Helper()
	o := st["frames_skipped"]*10 > st["frames_mixed"]
	switch {
	case o && testutil.Race:
		t.Logf("race detector: the mixer skipped %d frames and mixed %d: presence and levels not judged", st["frames_skipped"], st["frames_mixed"])
	case o:
		t.Errorf("the mixer skipped %d frames and mixed %d: it cannot keep up", st["frames_skipped"], st["frames_mixed"])
	}
	return o
}

// minPackets is how many packets of a stream of n frames the tests ask
// for: under the race detector, where the mixer skips frames (a full
// `go test -race ./...` on two busy cores let through 34 of 150), only
// enough to show that the mix flows; the tests without it judge the rest
// (.ci/run runs the mixing tests without the race detector too).
func minPackets(n int) int {
	if testutil.Race {
		return max(5, n/15)
	}
	return n
}

// presence is how clearly each source is in pcm: its best correlation
// within the first second, and where.
func presence(t *testing.T, pcm []float32, src testmedia.Speech, frames int) (float64, int) {
	ref := src.PCM[:frames*960-src.PreSkip]
	return testmedia.BestLag(ref, pcm, -5*960, 48000)
}

// TestMixOneSlot: three people talk at once (three voices and pitches) in
// a conversation of devices with one slot each. A listener's one slot
// carries all three; each speaker's carries the two others and never its
// own voice.
func TestMixOneSlot(t *testing.T) {
	voices := []testmedia.Voice{testmedia.VoiceA, testmedia.VoiceB, testmedia.VoiceC}
	names := []string{"alice", "bob", "carol"}
	maddr := testutil.FreeAddr(t)
	r := startRouter(t, map[string]string{"METRICS_LISTEN": maddr})
	for _, n := range append(slices.Clone(names), "dave") {
		r.mustJoin(n, "conv-1")
	}
	var talkers []talker
	for i, n := range names {
		talkers = append(talkers, talker{c: r.dial(n, beepclient.Options{Publish: true, Receive: 1}), s: testmedia.Speak(t, voices[i])})
	}
	dave := r.dial("dave", beepclient.Options{Receive: 1})
	bites := r.bites("bite")
	const frames = 150 // 3 s, all three at once
	talk(t, 0, frames, talkers...)
	waitPackets(t, dave, frames)
	for _, tk := range talkers {
		waitPackets(t, tk.c, frames)
	}
	defer mixBites(t, bites, talkers, names)
	st := mixerStats(r)
	t.Logf("mixer: %v", st)
	judge := !overloaded(t, st)
	// Four distinct mixes (dave's, and one without each speaker), not one
	// per listener: dave and a second listener would share his.
	if st["encoded"] == 0 || st["encoded"] > 4*(frames+100) {
		t.Errorf("%d frames encoded: want about 4 mixes × %d frames", st["encoded"], frames)
	}
	_, body := scrape(t, "http://"+maddr+"/metrics")
	for _, sample := range []string{"router_mix_encoded_total", "router_mix_decoded_total", "router_mix_latency_seconds_count"} {
		if v := metric(t, body, sample); v < float64(minPackets(frames)) && judge {
			t.Errorf("%s = %v, want at least %d", sample, v, frames)
		}
	}
	p50, p99 := histogramQuantiles(t, body, "router_mix_latency_seconds")
	t.Logf("mix latency, arrival to send, jitter buffer included: p50 %.1f ms, p99 %.1f ms", p50*1e3, p99*1e3)

	// The mixed packets' audio level extension carries the mix's level:
	// speech, voiced, louder than -40 dBov on most frames.
	id := dave.ReceivedLevelID()
	if id == 0 {
		t.Fatal("dave negotiated no audio level extension")
	}
	src := sourcePayloads(talkers...)
	mixed, loud := 0, 0
	for _, p := range stream(dave, mids(dave)[0]) {
		if src[string(p.Payload)] {
			continue
		}
		mixed++
		if ext := p.GetExtension(id); len(ext) == 1 && ext[0]&0x80 != 0 && ext[0]&0x7f <= 40 {
			loud++
		}
	}
	t.Logf("dave: %d mixed packets, %d with a voiced level of at least -40 dBov", mixed, loud)
	if judge && (mixed < minPackets(frames)/2 || loud < mixed/2) {
		t.Errorf("dave: %d mixed packets, %d of them with a voiced speech level; want most of %d, most loud", mixed, loud, frames)
	}

	listeners := append([]*beepclient.Client{dave}, talkers[0].c, talkers[1].c, talkers[2].c)
	for li, c := range listeners {
		who := "dave"
		if li > 0 {
			who = names[li-1]
		}
		m := mids(c)
		if len(m) != 1 {
			t.Fatalf("%s received on m-lines %v, want one", who, m)
		}
		pcm := decodeStream(t, stream(c, m[0]))
		var lags []int
		for k, tk := range talkers {
			if li == k+1 {
				continue // its own voice, checked below
			}
			c, lag := presence(t, pcm, tk.s, frames)
			t.Logf("%s hears %s: correlation %.3f at lag %d", who, names[k], c, lag)
			if c < present() && judge {
				t.Errorf("%s does not hear %s: correlation %.3f", who, names[k], c)
			}
			lags = append(lags, lag)
		}
		if li == 0 {
			continue
		}
		// The talkers sent in lockstep: the own voice would be near the
		// others' lag (within a frame or two of jitter buffer anchoring).
		own := talkers[li-1].s
		ref := own.PCM[:frames*960-own.PreSkip]
		c := testmedia.MaxAbsCorrelation(ref, pcm, lags[0], 2*960)
		t.Logf("%s hears itself: correlation at most %.3f near lag %d", who, c, lags[0])
		if c > 0.1 {
			t.Errorf("%s hears its own voice: correlation %.3f", who, c)
		}
	}
}

// mixBites ends the talkers' tracks and checks the bites: one of each
// speaker, made from its own packets, and never one of a mix (mixes are
// not published tracks: they never reach the bite chunker).
func mixBites(t *testing.T, bites <-chan *beeppb.Bite, talkers []talker, names []string) {
	t.Helper()
	if t.Failed() {
		return
	}
	for _, tk := range talkers {
		tk.c.Close()
	}
	got := map[string]bool{}
	timeout := time.After(30 * time.Second)
	for len(got) < len(names) {
		select {
		case b := <-bites:
			if !slices.Contains(names, b.User) || b.Key != "conv-1" {
				t.Errorf("a bite of %q (client %q) keyed %q: only the speakers make bites", b.User, b.Client, b.Key)
				continue
			}
			got[b.User] = true
		case <-timeout:
			t.Fatalf("bites of %v, want one of each of %v", got, names)
		}
	}
}

// histogramQuantiles estimates the median and 99th percentile of a
// Prometheus histogram from its buckets (the upper bound of the bucket
// each falls in).
func histogramQuantiles(t *testing.T, body, name string) (p50, p99 float64) {
	t.Helper()
	type bucket struct{ le, n float64 }
	var bs []bucket
	for _, l := range strings.Split(body, "\n") {
		rest, ok := strings.CutPrefix(l, name+`_bucket{le="`)
		if !ok {
			continue
		}
		le, val, _ := strings.Cut(rest, `"} `)
		b, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(val, 64)
		if err1 == nil && err2 == nil {
			bs = append(bs, bucket{b, n})
		}
	}
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		t.Fatalf("no samples of %s", name)
	}
	total := bs[len(bs)-1].n
	q := func(f float64) float64 {
		for _, b := range bs {
			if b.n >= f*total {
				return b.le
			}
		}
		return bs[len(bs)-1].le
	}
	return q(0.5), q(0.99)
}

// TestMixOverflowOnly: a device with two slots hears two speakers
// forwarded, and nothing is decoded or encoded; a third speaker brings a
// mix onto its second slot, which goes once that speaker's hangover is
// over. The second slot stays one continuous stream that opusdec decodes
// without a complaint.
func TestMixOverflowOnly(t *testing.T) {
	r := startRouter(t, nil)
	for _, n := range []string{"alice", "bob", "carol", "eve"} {
		r.mustJoin(n, "conv-1")
	}
	alice := talker{c: r.dial("alice", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceA)}
	bob := talker{c: r.dial("bob", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceB)}
	carol := talker{c: r.dial("carol", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceC)}
	eve := r.dial("eve", beepclient.Options{Receive: 2})
	src := sourcePayloads(alice, bob, carol)

	talk(t, 0, 100, alice, bob)
	waitPackets(t, eve, 2*90)
	if st := mixerStats(r); st["sessions_started"] != 0 || st["encoded"] != 0 || st["received"] != 0 {
		t.Fatalf("two speakers for two slots: the mixer ran (%v)", st)
	}
	if m := mids(eve); len(m) != 2 {
		t.Fatalf("eve receives on %v, want two m-lines", m)
	}
	for _, mid := range mids(eve) {
		for _, p := range stream(eve, mid) {
			if !src[string(p.Payload)] {
				t.Fatalf("m-line %s carried a packet no speaker sent before any mix was needed", mid)
			}
		}
	}

	// carol talks for 2 s with the others, who go on for 2.5 s more.
	talk(t, 100, 200, alice, bob, carol)
	talk(t, 200, 325, alice, bob)
	testutil.Eventually(t, 10*time.Second, "the mix to end after carol's hangover", func() bool {
		st := mixerStats(r)
		return st["sessions_started"] >= 1 && st["sessions_stopped"] == st["sessions_started"]
	})
	st := mixerStats(r)
	t.Logf("mixer: %v", st)
	m := mids(eve)
	first, second := stream(eve, m[0]), stream(eve, m[1])
	mixedOn := func(pkts []beepclient.Packet) (n int, lastMixed int) {
		lastMixed = -1
		for i, p := range pkts {
			if !src[string(p.Payload)] {
				n++
				lastMixed = i
			}
		}
		return n, lastMixed
	}
	if n, _ := mixedOn(first); n != 0 {
		t.Errorf("eve's first slot carried %d mixed packets: the mix goes on the last slot", n)
	}
	n, last := mixedOn(second)
	t.Logf("eve's second slot: %d packets, %d mixed, the last mixed at %d", len(second), n, last)
	if n < 50 {
		t.Errorf("eve's second slot carried %d mixed packets while three talked for 2 s", n)
	}
	if last < 0 || len(second)-last < 25 {
		t.Errorf("eve's second slot is not back to forwarding after the hangover: last mixed packet %d of %d", last, len(second))
	}
	// One continuous stream: consecutive sequence numbers, timestamps
	// that only grow, a marker where the source changes.
	markers := 0
	for i, p := range second {
		if i == 0 {
			continue
		}
		q := second[i-1]
		if p.SequenceNumber != q.SequenceNumber+1 || int32(p.Timestamp-q.Timestamp) <= 0 {
			t.Errorf("packet %d: seq %d ts %d after seq %d ts %d", i, p.SequenceNumber, p.Timestamp, q.SequenceNumber, q.Timestamp)
		}
		if p.Marker {
			markers++
		}
	}
	if markers < 2 {
		t.Errorf("%d marker bits on eve's second slot: want one at each switch to and from the mix", markers)
	}
	opusdecClean(t, second)
}

// opusdecClean writes pkts as an Ogg Opus file with the project's writer
// and checks that opusdec decodes it without a warning.
func opusdecClean(t *testing.T, pkts []beepclient.Packet) {
	t.Helper()
	if _, err := exec.LookPath("opusdec"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("opusdec not installed (Debian opus-tools)")
		}
		t.Skip("opusdec not installed (Debian opus-tools)")
	}
	var buf bytes.Buffer
	w, err := oggopus.NewWriter(&buf, oggopus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkts {
		if err := w.WriteRTP(p.Payload, p.Timestamp); err != nil {
			t.Fatalf("ogg: %v", err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "slot.opus")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("opusdec", path, filepath.Join(dir, "slot.wav")).CombinedOutput()
	if err != nil {
		t.Fatalf("opusdec: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if ll := strings.ToLower(l); strings.Contains(ll, "warning") || strings.Contains(ll, "error") || strings.Contains(ll, "fail") {
			t.Errorf("opusdec: %s", l)
		}
	}
}

// TestMixLossyContributor: one speaker reaches the router through a relay
// that drops 10% of its packets and delays the rest by up to 30 ms
// (reordering some), without NACK. The mix a one-slot listener gets stays
// one continuous stream, a frame every 20 ms of RTP time, and the loss is
// concealed.
func TestMixLossyContributor(t *testing.T) {
	port := testutil.FreeUDPPort(t)
	r := startRouter(t, map[string]string{"UDP_PORT": strconv.Itoa(port)})
	relay := testutil.NewRelay(t, port, testutil.RelayOptions{Loss: 0.1, Jitter: 30 * time.Millisecond})
	for _, n := range []string{"alice", "bob", "carol", "dave"} {
		r.mustJoin(n, "conv-1")
	}
	alice := talker{c: r.dial("alice", beepclient.Options{Publish: true, NoNACK: true, AnswerFilter: func(sdp string) string {
		return strings.ReplaceAll(sdp, " "+strconv.Itoa(port)+" typ host", " "+strconv.Itoa(relay.Port())+" typ host")
	}}), s: testmedia.Speak(t, testmedia.VoiceA)}
	bob := talker{c: r.dial("bob", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceB)}
	carol := talker{c: r.dial("carol", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceC)}
	dave := r.dial("dave", beepclient.Options{Receive: 1})
	src := sourcePayloads(alice, bob, carol)

	const frames = 200
	talk(t, 0, frames, alice, bob, carol)
	waitPackets(t, dave, frames)
	dropped, _ := relay.Counts()
	st := mixerStats(r)
	t.Logf("relay dropped %d of alice's packets; mixer: %v", dropped, st)
	if dropped == 0 {
		t.Fatal("the relay dropped nothing: the test proves nothing")
	}
	if st["concealed"]+st["recovered_fec"] == 0 {
		t.Errorf("nothing concealed or recovered for %d lost packets", dropped)
	}
	pkts := stream(dave, mids(dave)[0])
	var mixed []beepclient.Packet
	for _, p := range pkts {
		if !src[string(p.Payload)] {
			mixed = append(mixed, p)
		}
	}
	if len(mixed) < minPackets(frames)/2 {
		t.Fatalf("dave got %d mixed packets of %d, want most of %d", len(mixed), len(pkts), frames)
	}
	// A frame every 20 ms of RTP time. Only a mixer that fell behind (the
	// race detector) skips frames, and counts each.
	breaks := 0
	for i := 1; i < len(mixed); i++ {
		p, q := mixed[i], mixed[i-1]
		if p.SequenceNumber != q.SequenceNumber+1 {
			t.Errorf("mixed stream breaks: seq %d after %d", p.SequenceNumber, q.SequenceNumber)
		}
		if p.Timestamp-q.Timestamp != 960 {
			breaks++
			t.Logf("mixed stream: ts %d after %d", p.Timestamp, q.Timestamp)
		}
	}
	if skipped := mixerStats(r)["frames_skipped"]; uint64(breaks) > skipped {
		t.Errorf("%d gaps longer than a frame in the mixed stream, %d frames skipped by the mixer", breaks, skipped)
	}
	pcm := decodeStream(t, pkts)
	for k, tk := range []talker{alice, bob, carol} {
		c, lag := presence(t, pcm, tk.s, frames)
		t.Logf("dave hears %s: correlation %.3f at lag %d", []string{"alice", "bob", "carol"}[k], c, lag)
		if c < present()*0.8 && !overloaded(t, st) {
			t.Errorf("speaker %d is not heard in the mix: correlation %.3f", k, c)
		}
	}
}

// TestMixAlways: with mode always, a device hears its conversation as one
// mix on its first slot even when its slots would fit every speaker: here
// one speaker, two slots.
func TestMixAlways(t *testing.T) {
	r := startRouter(t, map[string]string{"PIPELINE": writePipeline(t, `
stages:
  - name: permission-gate
  - name: forwarder
  - name: mixer
    settings: {mode: always}
`)})
	r.mustJoin("alice", "conv-1")
	r.mustJoin("bob", "conv-1")
	alice := talker{c: r.dial("alice", beepclient.Options{Publish: true}), s: testmedia.Speak(t, testmedia.VoiceA)}
	bob := r.dial("bob", beepclient.Options{Receive: 2})
	const frames = 100
	talk(t, 0, frames, alice)
	waitPackets(t, bob, frames)
	m := mids(bob)
	if len(m) != 1 {
		t.Fatalf("bob received on m-lines %v, want the first only", m)
	}
	pkts := stream(bob, m[0])
	src := sourcePayloads(alice)
	for i, p := range pkts {
		if src[string(p.Payload)] {
			t.Fatalf("packet %d of bob's slot is alice's own: want only the mix", i)
		}
	}
	c, lag := presence(t, decodeStream(t, pkts), alice.s, frames-10)
	t.Logf("bob hears alice in the mix: correlation %.3f at lag %d", c, lag)
	if c < present() {
		t.Errorf("alice is not heard in bob's mix: correlation %.3f", c)
	}
}
