package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// TestArbiterAPIServed: the router serves the Arbiter room API on the
// embedded JetStream: a room made, claimed for a path, and found by it;
// answers carry CORS for any origin (the default).
func TestArbiterAPIServed(t *testing.T) {
	r := startRouter(t, map[string]string{"ALLOWED_ORIGINS": "https://beep.example.org"})
	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req, err := http.NewRequest(method, r.url(path), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", "https://customer.example.com")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got == "" {
			t.Errorf("%s %s: no Access-Control-Allow-Origin", method, path)
		}
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	code, made := do(http.MethodPut, "/createRoom", "")
	if code != http.StatusOK || made["roomId"] == nil {
		t.Fatalf("createRoom: %d %v", code, made)
	}
	code, claimed := do(http.MethodPatch, "/claimRoom", `{"urlPath":"/standup"}`)
	if code != http.StatusOK || claimed["roomId"] != made["roomId"] {
		t.Fatalf("claimRoom: %d %v, want room %v", code, claimed, made["roomId"])
	}
	code, found := do(http.MethodGet, "/getRoomId?urlPath="+url.QueryEscape("/standup"), "")
	if code != http.StatusOK || found["id"] != made["roomId"] {
		t.Fatalf("getRoomId: %d %v, want room %v", code, found, made["roomId"])
	}
	if code, _ := do(http.MethodGet, "/getRoomId?urlPath=/nowhere", ""); code != http.StatusNotFound {
		t.Fatalf("getRoomId of an unclaimed path: %d, want 404", code)
	}
}
