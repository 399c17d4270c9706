package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/beepvoice/router/beeppb"
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// identity is one page's dev identity.
type identity struct{ user, client string }

func newIdentity() identity {
	return identity{user: "u-" + randHex(16), client: "c-" + randHex(8)}
}

// biteLog collects the bites published on NATS.
type biteLog struct {
	mu    sync.Mutex
	bites []*beeppb.Bite
	bad   []error
}

// subscribeBites subscribes to subject "bite" on the router's NATS.
func subscribeBites(t *testing.T, rt *router) *biteLog {
	t.Helper()
	nc, err := nats.Connect(rt.NATS, nats.Name("e2e"))
	if err != nil {
		t.Fatalf("connect to the router's NATS: %v", err)
	}
	l := &biteLog{}
	sub, err := nc.Subscribe("bite", func(m *nats.Msg) {
		var b beeppb.Bite
		err := proto.Unmarshal(m.Data, &b)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.bad = append(l.bad, err)
			return
		}
		l.bites = append(l.bites, &b)
	})
	if err == nil {
		err = nc.Flush()
	}
	if err != nil {
		nc.Close()
		t.Fatalf("subscribe to bites: %v", err)
	}
	t.Cleanup(func() {
		_ = sub.Unsubscribe()
		nc.Close()
	})
	return l
}

// of returns the bites of user, in order of arrival.
func (l *biteLog) of(user string) []*beeppb.Bite {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*beeppb.Bite
	for _, b := range l.bites {
		if b.GetUser() == user {
			out = append(out, b)
		}
	}
	return out
}

func (l *biteLog) all() ([]*beeppb.Bite, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*beeppb.Bite(nil), l.bites...), append([]error(nil), l.bad...)
}

// startBrowsers starts the named browsers in parallel: name -> wav.
func startBrowsers(t *testing.T, wavs map[string]string) map[string]*browser {
	t.Helper()
	var mu sync.Mutex
	out := map[string]*browser{}
	var errs []error
	var wg sync.WaitGroup
	for name, wav := range wavs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := newBrowser(t, name, wav)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			out[name] = b
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitConnected waits until every tab's pc is connected.
func waitConnected(t *testing.T, timeout time.Duration, tabs ...*tab) {
	t.Helper()
	err := waitFor(timeout, 100*time.Millisecond, func() error {
		for _, tb := range tabs {
			var state string
			if err := tb.eval(2*time.Second, `typeof pc === 'undefined' ? 'no pc' : pc.connectionState`, &state); err != nil {
				return err
			}
			if state == "failed" || state == "closed" {
				return errStop{fmt.Errorf("%s: connection %s", tb.name, state)}
			}
			if state != "connected" {
				return fmt.Errorf("%s: connection %s", tb.name, state)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pages did not connect: %v", err)
	}
}

// TestCalls runs scenarios 1-4 on one router, at the same time:
//
//	conversation X: A and B, the seed README's JavaScript, each with its own
//	  recording (three utterances, played once)              → scenarios 1, 4
//	conversation Y: C, the seed README's JavaScript, alone   → scenario 2
//	conversation Z: S1, S2, S3 (seed) and L, a page with three receiving
//	  transceivers, all speaking a looping recording         → scenario 3
func TestCalls(t *testing.T) {
	needBrowser(t, "espeak-ng", "sox", "soxi", "opusdec", "opusinfo")
	t0 := time.Now()
	phase := func(what string) { t.Logf("%6.1fs %s", time.Since(t0).Seconds(), what) }

	dir := t.TempDir()
	// Each recording plays once, from the page's getUserMedia: the lead
	// leaves a busy machine time to connect before the first utterance
	// (and checkBites judges only the utterances that began after it).
	speechA := &speech{Voice: "en-gb", Lead: 8, Gap: 1.5, Trail: 2,
		Phrases: []string{"alpha bravo charlie", "delta echo foxtrot", "golf hotel india"}}
	speechB := &speech{Voice: "en-us", Lead: 8.3, Gap: 1.5, Trail: 2,
		Phrases: []string{"one two three four", "five six seven", "eight nine ten"}}
	speechZ := &speech{Voice: "en-gb-scotland", Lead: 0.3, Gap: 0.7, Trail: 0.7,
		Phrases: []string{"the quick brown fox", "jumps over the lazy dog"}}
	makeSpeech(t, dir, "a", speechA)
	makeSpeech(t, dir, "b", speechB)
	makeSpeech(t, dir, "z", speechZ)
	phase(fmt.Sprintf("recordings made: A %.2fs %v, B %.2fs %v", speechA.total(), speechA.Utterances, speechB.total(), speechB.Utterances))

	rt := startRouter(t)
	bites := subscribeBites(t, rt)
	pages := pageServer(t)
	phase("router ready")

	convX, convY, convZ := "e2e-x-"+randHex(4), "e2e-y-"+randHex(4), "e2e-z-"+randHex(4)
	idA, idB, idC, idL := newIdentity(), newIdentity(), newIdentity(), newIdentity()
	idS := []identity{newIdentity(), newIdentity(), newIdentity()}
	ctx := t.Context()
	joins := []struct {
		id   identity
		conv string
	}{{idA, convX}, {idB, convX}, {idC, convY}, {idL, convZ}, {idS[0], convZ}, {idS[1], convZ}, {idS[2], convZ}}
	for _, j := range joins {
		if err := rt.join(ctx, j.id.user, j.id.client, j.conv); err != nil {
			t.Fatal(err)
		}
	}

	bs := startBrowsers(t, map[string]string{
		"A": speechA.Path + "%noloop",
		"B": speechB.Path + "%noloop",
		"Z": speechZ.Path,
	})
	phase("browsers started")

	open := func(b *browser, name, path string, id identity, first bool, extra map[string][]string) *tab {
		t.Helper()
		tb, err := b.open(name, pageURL(pages, rt, path, id.user, id.client, extra), first)
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	tabA := open(bs["A"], "A", "/seed", idA, true, nil)
	tabB := open(bs["B"], "B", "/seed", idB, true, nil)
	tabC := open(bs["Z"], "C", "/seed", idC, true, nil)
	tabL := open(bs["Z"], "L", "/slots", idL, false, map[string][]string{"n": {"3"}})
	var tabS []*tab
	for i, id := range idS {
		tabS = append(tabS, open(bs["Z"], fmt.Sprintf("S%d", i+1), "/seed", id, false, nil))
	}
	all := append([]*tab{tabA, tabB, tabC, tabL}, tabS...)
	waitConnected(t, 20*time.Second, all...)
	phase("7 pages connected")

	for _, tb := range all {
		s, err := tb.stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.Local != "127.0.0.1" || s.Remote != "127.0.0.1" {
			t.Errorf("%s: selected candidate pair %s ↔ %s, want loopback on both ends", tb.name, s.Local, s.Remote)
		}
	}

	t.Run("1_two_users_hear_each_other", func(t *testing.T) {
		for _, tb := range []*tab{tabA, tabB} {
			first, last, err := growth(tb, 15*time.Second, 1, minEnergy)
			if err != nil {
				t.Fatalf("%s: %v", tb.name, err)
			}
			t.Logf("%s receives: packetsReceived %d → %d, totalAudioEnergy %.5f → %.5f",
				tb.name, first.Inbound[0].PacketsReceived, last.Inbound[0].PacketsReceived,
				first.Inbound[0].TotalAudioEnergy, last.Inbound[0].TotalAudioEnergy)
		}
		phase("scenario 1 measured")
	})

	t.Run("3_three_speakers_at_once", func(t *testing.T) {
		first, last, err := growth(tabL, 15*time.Second, 3, minEnergy)
		if err != nil {
			t.Fatalf("L: %v", err)
		}
		for i := range last.Inbound {
			t.Logf("L slot mid %s: packetsReceived %d → %d, totalAudioEnergy %.5f → %.5f", last.Inbound[i].Mid,
				first.Inbound[i].PacketsReceived, last.Inbound[i].PacketsReceived,
				first.Inbound[i].TotalAudioEnergy, last.Inbound[i].TotalAudioEnergy)
		}
		phase("scenario 3 measured")
	})

	t.Run("4_bites_one_per_utterance", func(t *testing.T) {
		// Each recording plays once from its getUserMedia; wait until both
		// have ended and their last silence has closed the last bite.
		var gumA, gumB, connA, connB int64
		for _, x := range []struct {
			tb        *tab
			sp        *speech
			gum, conn *int64
		}{{tabA, speechA, &gumA, &connA}, {tabB, speechB, &gumB, &connB}} {
			var at struct{ Gum, Connected int64 }
			if err := x.tb.eval(2*time.Second, `({gum: window.__gumAt, connected: window.__connectedAt})`, &at); err != nil {
				t.Fatal(err)
			}
			*x.gum, *x.conn = at.Gum, at.Connected
			t.Logf("%s connected %.2f s after getUserMedia; its first utterance starts at %.2f s", x.tb.name, float64(at.Connected-at.Gum)/1000, x.sp.Lead)
		}
		endA := time.UnixMilli(gumA).Add(secs(speechA.total()))
		endB := time.UnixMilli(gumB).Add(secs(speechB.total()))
		err := waitFor(time.Until(endA)+20*time.Second, 100*time.Millisecond, func() error {
			if time.Now().Before(endA) || time.Now().Before(endB) {
				return errors.New("recordings still playing")
			}
			if a, b := len(bites.of(idA.user)), len(bites.of(idB.user)); a < heard(speechA, gumA, connA) || b < heard(speechB, gumB, connB) {
				return fmt.Errorf("bites so far: A %d, B %d", a, b)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		phase("bites of A and B arrived")
		checkBites(t, dir, "A", bites.of(idA.user), idA, convX, speechA, gumA, connA)
		checkBites(t, dir, "B", bites.of(idB.user), idB, convX, speechB, gumB, connB)
	})

	t.Run("2_other_conversation_hears_nothing", func(t *testing.T) {
		s, err := tabC.stats()
		if err != nil {
			t.Fatal(err)
		}
		if s.State != "connected" || s.PacketsSent == 0 {
			t.Fatalf("C is not live: connection %s, %d packets sent", s.State, s.PacketsSent)
		}
		if n := s.packets(); n != 0 {
			t.Errorf("C (conversation Y) received %d packets while A and B spoke in X", n)
		}
		// C's own speech made bites in Y, and nobody else's did.
		all, bad := bites.all()
		if len(bad) > 0 {
			t.Errorf("undecodable bite messages: %v", bad)
		}
		cBites := 0
		for _, b := range all {
			want := map[string]string{idA.user: convX, idB.user: convX, idC.user: convY, idL.user: convZ,
				idS[0].user: convZ, idS[1].user: convZ, idS[2].user: convZ}[b.GetUser()]
			if b.GetKey() != want {
				t.Errorf("bite of %s keyed %q, want %q", b.GetUser(), b.GetKey(), want)
			}
			if b.GetUser() == idC.user {
				cBites++
			}
		}
		if cBites == 0 {
			t.Errorf("C made no bites in Y: is its microphone live?")
		}
		t.Logf("C: connected, %d packets sent, 0 received, %d bites in its own conversation; %d bites in all", s.PacketsSent, cBites, len(all))
	})
	phase("done")
}

// minEnergy is the totalAudioEnergy (the integral of the squared level over
// seconds) that proves speech was heard: one second of these recordings at
// -3 dBFS peaks gives about 0.01-0.05, a second of silence about 1e-8.
const minEnergy = 0.002

func secs(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// growth waits until tb has n inbound audio streams that have packets and
// at least minEnergy of totalAudioEnergy, then until each one has received
// more packets and at least minEnergy more energy since, over the same
// window; it returns both samples.
func growth(tb *tab, timeout time.Duration, n int, minEnergy float64) (first, last rtcStats, err error) {
	ready := func(s rtcStats) error {
		if len(s.Inbound) != n {
			return fmt.Errorf("%d inbound audio streams, want %d", len(s.Inbound), n)
		}
		for _, in := range s.Inbound {
			if in.PacketsReceived == 0 || in.TotalAudioEnergy < minEnergy {
				return fmt.Errorf("inbound mid %s: %d packets, energy %g", in.Mid, in.PacketsReceived, in.TotalAudioEnergy)
			}
		}
		return nil
	}
	err = waitFor(timeout, 200*time.Millisecond, func() error {
		if first, err = tb.stats(); err != nil {
			return err
		}
		return ready(first)
	})
	if err != nil {
		return first, last, err
	}
	err = waitFor(timeout, 200*time.Millisecond, func() error {
		if last, err = tb.stats(); err != nil {
			return err
		}
		if err := ready(last); err != nil {
			return errStop{err}
		}
		for i, in := range last.Inbound {
			if in.PacketsReceived <= first.Inbound[i].PacketsReceived || in.TotalAudioEnergy < first.Inbound[i].TotalAudioEnergy+minEnergy {
				return fmt.Errorf("inbound mid %s not growing: packets %d → %d, energy %g → %g", in.Mid,
					first.Inbound[i].PacketsReceived, in.PacketsReceived, first.Inbound[i].TotalAudioEnergy, in.TotalAudioEnergy)
			}
		}
		return nil
	})
	return first, last, err
}

// utteranceStart returns when utterance i of sp began (unix ms), the
// recording having started at getUserMedia, gumMS.
func utteranceStart(sp *speech, gumMS int64, i int) float64 {
	at := float64(gumMS) + sp.Lead*1000
	for _, u := range sp.Utterances[:i] {
		at += (u + sp.Gap) * 1000
	}
	return at
}

// spokenAfter returns the index of the first utterance of sp that began at
// least half a second after the page connected (connMS): the router can
// have heard those whole. The earlier ones were spoken, in part or whole,
// before there was a connection to send them on.
func spokenAfter(sp *speech, gumMS, connMS int64) int {
	i := 0
	for i < len(sp.Utterances) && utteranceStart(sp, gumMS, i) < float64(connMS)+500 {
		i++
	}
	return i
}

// heard is how many bites a speaker's recording must give: one per
// utterance spoken after its page connected.
func heard(sp *speech, gumMS, connMS int64) int {
	return len(sp.Utterances) - spokenAfter(sp, gumMS, connMS)
}

// checkBites checks one speaker's bites against its recording: one bite per
// utterance spoken after the page connected (the timing comes from what
// happened: when getUserMedia started the recording and when the page
// connected), in order, of plausible length and spacing, each a valid Ogg
// Opus file. An utterance begun before the connection may or may not give a
// (partial) bite; it is left out.
func checkBites(t *testing.T, dir, name string, got []*beeppb.Bite, id identity, conv string, sp *speech, gumMS, connMS int64) {
	t.Helper()
	skip := spokenAfter(sp, gumMS, connMS)
	if skip == len(sp.Utterances) {
		t.Fatalf("%s connected %.2f s after getUserMedia, after its last utterance began: its connection took longer than the %.1f s recording", name, float64(connMS-gumMS)/1000, sp.total())
	}
	if skip > 0 {
		t.Logf("%s: its first %d utterance(s) began before it connected; judging the other %d", name, skip, len(sp.Utterances)-skip)
		// A bite of an utterance cut by the connection may come first.
		for len(got) > len(sp.Utterances)-skip && float64(got[0].GetStartMs()) < utteranceStart(sp, gumMS, skip)-300 {
			got = got[1:]
		}
	}
	if len(got) != len(sp.Utterances)-skip {
		for _, b := range got {
			t.Logf("%s bite seq %d start %d duration %d ms", name, b.GetSeq(), b.GetStartMs(), b.GetDurationMs())
		}
		t.Fatalf("%s: %d bites, want one per utterance spoken after connecting: %d", name, len(got), len(sp.Utterances)-skip)
	}
	expectStart := utteranceStart(sp, gumMS, skip)
	seq0 := uint64(0)
	if len(got) > 0 {
		seq0 = got[0].GetSeq()
	}
	for i, b := range got {
		dur := float64(b.GetDurationMs()) / 1000
		utt := sp.Utterances[skip+i]
		t.Logf("%s bite %d: seq %d, starts %+.0f ms from its utterance, %.2f s for a %.2f s utterance, %d bytes",
			name, i, b.GetSeq(), float64(b.GetStartMs())-expectStart, dur, utt, len(b.GetData()))
		if b.GetKey() != conv || b.GetClient() != id.client || b.GetFormat() != "ogg-opus" || b.GetSeq() != seq0+uint64(i) {
			t.Errorf("%s bite %d: key %q client %q format %q seq %d; want %q %q ogg-opus %d",
				name, i, b.GetKey(), b.GetClient(), b.GetFormat(), b.GetSeq(), conv, id.client, seq0+uint64(i))
		}
		if skip == 0 && b.GetSeq() != uint64(i) {
			t.Errorf("%s bite %d has seq %d: with every utterance heard, bites count from 0", name, i, b.GetSeq())
		}
		// The bite holds the utterance plus up to 100 ms of pre-roll on
		// each side, in whole 20 ms packets.
		if dur < utt-0.25 || dur > utt+0.35 {
			t.Errorf("%s bite %d lasts %.2f s; its utterance %.2f s", name, i, dur, utt)
		}
		if b.GetStart() != b.GetStartMs()/1000 {
			t.Errorf("%s bite %d: start %d s, start_ms %d", name, i, b.GetStart(), b.GetStartMs())
		}
		if i > 0 {
			// Starts are one utterance and one gap apart.
			step := float64(b.GetStartMs()-got[i-1].GetStartMs()) / 1000
			want := sp.Utterances[skip+i-1] + sp.Gap
			if math.Abs(step-want) > 0.3 {
				t.Errorf("%s bite %d starts %.2f s after the previous one, want %.2f s", name, i, step, want)
			}
		}
		expectStart += (utt + sp.Gap) * 1000
		checkOgg(t, dir, fmt.Sprintf("%s-bite%d", strings.ToLower(name), i), b.GetData(), dur)
	}
}

// checkOgg checks data with opusinfo and opusdec: no warnings, and decoded
// audio as long as the bite says.
func checkOgg(t *testing.T, dir, name string, data []byte, dur float64) {
	t.Helper()
	ogg := filepath.Join(dir, name+".ogg")
	wav := filepath.Join(dir, name+".wav")
	if err := os.WriteFile(ogg, data, 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := exec.Command("opusinfo", ogg).CombinedOutput()
	if err != nil || strings.Contains(strings.ToLower(string(info)), "warning") || strings.Contains(strings.ToLower(string(info)), "error") {
		t.Errorf("opusinfo %s: %v\n%s", name, err, info)
	}
	dec, err := exec.Command("opusdec", "--quiet", ogg, wav).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(dec))) > 0 {
		t.Errorf("opusdec %s: %v\n%s", name, err, dec)
		return
	}
	out, err := exec.Command("soxi", "-D", wav).Output()
	if err != nil {
		t.Errorf("soxi %s: %v", wav, err)
		return
	}
	d, _ := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if math.Abs(d-dur) > 0.05 {
		t.Errorf("%s decodes to %.3f s, the bite says %.3f s", name, d, dur)
	}
}
