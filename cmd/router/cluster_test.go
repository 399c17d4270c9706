package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/beepvoice/router/claim"

	"github.com/beepvoice/router/internal/testutil"
)

// TestTwoRoutersShareDeviceSignalling runs two routers on one external NATS
// server: a device subscribed on one receives what is posted on the other,
// and both list it.
func TestTwoRoutersShareDeviceSignalling(t *testing.T) {
	ns := testutil.StartNATS(t)
	a := startExternal(t, ns.URL())
	b := startExternal(t, ns.URL())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.addr()+"/subscribe", nil)
	req.Header.Set(claim.Header, `{"userid":"alice","clientid":"tablet"}`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("subscribe: %d", resp.StatusCode)
	}

	// Router b learns of alice's tablet through presence.
	if err := testutil.Until(ctx, func() bool { return strings.Contains(get(t, b, "/user/alice/devices"), "tablet") }); err != nil {
		t.Fatalf("router b never lists alice's tablet: %s", get(t, b, "/user/alice/devices"))
	}
	post, _ := http.NewRequest(http.MethodPost, "http://"+b.addr()+"/user/alice/device/tablet", strings.NewReader(`{"data":"ring","event":"call"}`))
	post.Header.Set(claim.Header, `{"userid":"bob","clientid":"phone"}`)
	pr, err := http.DefaultClient.Do(post)
	if err != nil {
		t.Fatal(err)
	}
	pr.Body.Close()
	if pr.StatusCode != http.StatusOK {
		t.Fatalf("post via router b: %d", pr.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	for sc.Scan() {
		if l := sc.Text(); l != "" && !strings.HasPrefix(l, ":") {
			lines = append(lines, l)
		}
		if len(lines) == 3 {
			break
		}
	}
	want := []string{"id: bob:phone", "event: call", "data: ring"}
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("event lines %q, want %q", lines, want)
	}
}

func startExternal(t *testing.T, natsURL string) *app {
	t.Helper()
	return startApp(t, map[string]string{"LISTEN": "127.0.0.1:0", "ICE_IPS": "127.0.0.1", "NATS": natsURL, "PERMISSIONS_HOST": "allow-all"}, registry())
}

func get(t *testing.T, a *app, path string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://"+a.addr()+path, nil)
	req.Header.Set(claim.Header, `{"userid":"carol","clientid":"x"}`)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ids []string
	_ = json.NewDecoder(resp.Body).Decode(&ids)
	return strings.Join(ids, ",")
}
