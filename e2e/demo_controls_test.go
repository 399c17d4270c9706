package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// slotView is one channel of the demo page: whom it says it carries, and
// the energy its audio received so far.
type slotView struct {
	User   string  `json:"user"`
	Label  string  `json:"label"`
	Energy float64 `json:"energy"`
}

const demoSlotsJS = `(async () => {
  const call = window.beepDemo.call;
  const levels = call ? await call.levels() : { slots: [] };
  return Array.from(document.querySelectorAll('#slots .slot')).map((s, i) => ({
    user: s.dataset.user || '',
    label: s.querySelector('.slot-name').textContent,
    energy: (levels.slots[i] || {}).energy || 0,
  }));
})()`

// slotOf waits until tb labels a channel with user's name and returns its
// index.
func slotOf(t *testing.T, tb *tab, user, name string) int {
	t.Helper()
	idx := -1
	err := waitFor(20*time.Second, 100*time.Millisecond, func() error {
		var slots []slotView
		if err := tb.eval(3*time.Second, demoSlotsJS, &slots); err != nil {
			return err
		}
		for i, s := range slots {
			if s.User == user {
				if s.Label != name {
					return fmt.Errorf("channel %d carries %s but reads %q", i, user, s.Label)
				}
				idx = i
				return nil
			}
		}
		return fmt.Errorf("no channel carries %s: %+v", user, slots)
	})
	if err != nil {
		t.Fatalf("%s: %v", tb.name, err)
	}
	return idx
}

// energy returns the received audio energy of tb's channel i.
func energy(tb *tab, i int) (float64, error) {
	var slots []slotView
	if err := tb.eval(3*time.Second, demoSlotsJS, &slots); err != nil {
		return 0, err
	}
	if i >= len(slots) {
		return 0, fmt.Errorf("no channel %d", i)
	}
	return slots[i].Energy, nil
}

// energyGrowth measures how much energy tb's channel i receives over a
// window of at least d (timed by the samples themselves).
func energyGrowth(tb *tab, i int, d time.Duration) (float64, error) {
	e0, err := energy(tb, i)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	var e1 float64
	err = waitFor(d+10*time.Second, 100*time.Millisecond, func() error {
		if e1, err = energy(tb, i); err != nil {
			return err
		}
		if time.Since(start) < d {
			return fmt.Errorf("window not over")
		}
		return nil
	})
	return e1 - e0, err
}

// checkDemoControls checks, on two connected demo pages, what a person
// sees and does beyond the call itself: each channel names whom it
// carries; the invite link is the address the page was loaded from; Bob's
// mute stops his audio at Ada's side and unmute brings it back; a bite
// plays to its end in the page's player; the page fits a 390-pixel-wide
// phone; Bob's name stays on his bites after he leaves.
func checkDemoControls(t *testing.T, rt *router, ada, bob *tab) {
	ids := map[*tab]string{}
	for _, tb := range []*tab{ada, bob} {
		var id string
		if err := tb.eval(2*time.Second, `window.beepDemo.me.userid`, &id); err != nil {
			t.Fatal(err)
		}
		ids[tb] = id
	}

	// Channel labels: each page names the other on the channel that
	// carries them.
	bobOnAda := slotOf(t, ada, ids[bob], "Bob")
	slotOf(t, bob, ids[ada], "Ada")
	t.Logf("Ada hears Bob on channel %d, labelled Bob; Bob's page labels Ada", bobOnAda+1)

	// The invite link uses the address the page was loaded from.
	var invite string
	if err := ada.eval(2*time.Second, `document.getElementById('invite-link').href`, &invite); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(invite)
	want, _ := url.Parse(rt.HTTP)
	if err != nil || u.Host != want.Host || u.Scheme != want.Scheme || u.Query().Get("conversation") == "" {
		t.Errorf("invite link %q, want one on %s with the conversation", invite, rt.HTTP)
	}

	// Mute: Bob's audio stops reaching Ada, for longer than any pause of
	// the recording (at most 1.7 s); unmute brings it back.
	const window = 4 * time.Second
	if g, err := energyGrowth(ada, bobOnAda, window); err != nil || g <= 0 {
		t.Fatalf("before mute, Ada's channel of Bob gained energy %g over %v (%v)", g, window, err)
	}
	if err := chromedp.Do(bob.ctx, chromedp.Click("#mute")); err != nil {
		t.Fatal(err)
	}
	// Audio already on its way still arrives: judge the windows after it.
	err = waitFor(20*time.Second, 0, func() error {
		g, err := energyGrowth(ada, bobOnAda, window)
		if err != nil {
			return errStop{err}
		}
		if g > 1e-6 {
			return fmt.Errorf("still %g energy over %v after mute", g, window)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("mute: %v", err)
	}
	if err := chromedp.Do(bob.ctx, chromedp.Click("#mute")); err != nil {
		t.Fatal(err)
	}
	err = waitFor(20*time.Second, 0, func() error {
		g, err := energyGrowth(ada, bobOnAda, window)
		if err != nil {
			return errStop{err}
		}
		if g <= 1e-6 {
			return fmt.Errorf("no energy over %v after unmute", window)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("unmute: %v", err)
	}
	t.Logf("Bob's mute stopped his energy at Ada's side; unmute brought it back")

	// A bite of Bob's plays to its end in Ada's page.
	const playJS = `(() => {
	  const b = Array.from(document.querySelectorAll('#bites .bite')).filter((x) => x.dataset.user === %q).pop();
	  if (!b) return 'none';
	  const p = b.querySelector('.player');
	  if (p.dataset.state === 'idle') p.querySelector('.play').click();
	  return p.dataset.state + ' ' + p.querySelector('.bite-time').textContent;
	})()`
	var state string
	err = waitFor(20*time.Second, 100*time.Millisecond, func() error {
		if err := ada.eval(2*time.Second, fmt.Sprintf(playJS, ids[bob]), &state); err != nil {
			return err
		}
		switch {
		case strings.HasPrefix(state, "error"):
			return errStop{fmt.Errorf("bite player: %s", state)}
		case !strings.HasPrefix(state, "ended"):
			return fmt.Errorf("bite player: %s", state)
		case strings.Contains(state, "0:00"):
			return errStop{fmt.Errorf("bite player shows %s", state)}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Ada plays a bite of Bob's: %v", err)
	}
	t.Logf("a bite of Bob's played to its end in Ada's page (%s)", state)

	// Phone width: nothing overflows 390 CSS pixels.
	ctx, cancel := context.WithTimeout(ada.ctx, 20*time.Second)
	defer cancel()
	err = chromedp.Do(ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2), chromedp.EmulateMobile))
	if err != nil {
		t.Fatal(err)
	}
	var overflow struct {
		Scroll int    `json:"scroll"`
		Inner  int    `json:"inner"`
		Wide   string `json:"wide"`
	}
	const overflowJS = `(() => {
	  const inner = window.innerWidth;
	  const wide = Array.from(document.querySelectorAll('body *')).filter((e) => e.getBoundingClientRect().right > inner + 0.5 && e.offsetParent !== null).slice(0, 5).map((e) => e.tagName + '.' + e.className);
	  return { scroll: document.documentElement.scrollWidth, inner, wide: wide.join(', ') };
	})()`
	if err := ada.eval(3*time.Second, overflowJS, &overflow); err != nil {
		t.Fatal(err)
	}
	if overflow.Inner != 390 || overflow.Scroll > overflow.Inner || overflow.Wide != "" {
		t.Errorf("at 390 px: scroll width %d, window %d, wider elements: %s", overflow.Scroll, overflow.Inner, overflow.Wide)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("phone screenshot: %v", err)
	}
	t.Logf("phone-width screenshot: %s", saveArtifact(t, "demo-page-390.png", png))
	if err := chromedp.Do(ctx, chromedp.EmulateReset()); err != nil {
		t.Fatal(err)
	}

	// Bob leaves: Ada's list of people drops him, his bites keep his name.
	if err := chromedp.Do(bob.ctx, chromedp.Click("#leave")); err != nil {
		t.Fatal(err)
	}
	const afterJS = `(() => ({
	  people: document.querySelectorAll('#members .member').length,
	  names: Array.from(document.querySelectorAll('#bites .bite')).filter((b) => b.dataset.user === %q).map((b) => b.querySelector('.bite-who').textContent),
	}))()`
	var after struct {
		People int      `json:"people"`
		Names  []string `json:"names"`
	}
	err = waitFor(15*time.Second, 100*time.Millisecond, func() error {
		if err := ada.eval(2*time.Second, fmt.Sprintf(afterJS, ids[bob]), &after); err != nil {
			return err
		}
		if after.People != 1 {
			return fmt.Errorf("%d people listed after Bob left", after.People)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Names) == 0 {
		t.Fatal("no bites of Bob listed")
	}
	for _, n := range after.Names {
		if n != "Bob" {
			t.Errorf("after Bob left, his bite reads %q", n)
		}
	}
	t.Logf("after Bob left, his %d bites still read Bob", len(after.Names))
}
