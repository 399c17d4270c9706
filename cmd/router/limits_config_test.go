package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/beepvoice/router/rtc"
)

// TestLimitSettings: MAX_MEDIA_LINES, MAX_TRACKS_PER_PEER and
// ICE_FORBIDDEN_NETWORKS are read, defaulted and validated.
func TestLimitSettings(t *testing.T) {
	load := func(env map[string]string) (config, error) {
		return loadConfig(func(k string) string { return env[k] }, false)
	}
	c, err := load(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxMediaLines != rtc.DefaultMaxMediaLines || c.MaxTracks != rtc.DefaultMaxTracksPerPeer {
		t.Errorf("defaults: %d m-lines, %d tracks", c.MaxMediaLines, c.MaxTracks)
	}
	if !slices.Equal(c.Forbidden, rtc.DefaultForbiddenNetworks(nil)) || !slices.Contains(c.Forbidden, netip.MustParsePrefix("127.0.0.0/8")) {
		t.Errorf("default forbidden networks: %v", c.Forbidden)
	}

	c, err = load(map[string]string{"ICE_IPS": "127.0.0.1", "ICE_FORBIDDEN_NETWORKS": "10.0.0.0/8, fc00::/7,192.168.1.7", "MAX_MEDIA_LINES": "40", "MAX_TRACKS_PER_PEER": "2"})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(c.Forbidden, netip.MustParsePrefix("127.0.0.0/8")) {
		t.Errorf("loopback forbidden with ICE_IPS=127.0.0.1: %v", c.Forbidden)
	}
	for _, p := range []string{"169.254.0.0/16", "10.0.0.0/8", "fc00::/7", "192.168.1.7/32"} {
		if !slices.Contains(c.Forbidden, netip.MustParsePrefix(p)) {
			t.Errorf("%s not forbidden: %v", p, c.Forbidden)
		}
	}
	if c.MaxMediaLines != 40 || c.MaxTracks != 2 {
		t.Errorf("%d m-lines, %d tracks", c.MaxMediaLines, c.MaxTracks)
	}

	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"ICE_FORBIDDEN_NETWORKS": "10.0.0.0/33"}, "ICE_FORBIDDEN_NETWORKS"},
		{map[string]string{"ICE_FORBIDDEN_NETWORKS": "internal"}, "ICE_FORBIDDEN_NETWORKS"},
		{map[string]string{"MAX_MEDIA_LINES": "0"}, "MAX_MEDIA_LINES"},
		{map[string]string{"MAX_MEDIA_LINES": "8"}, "at least MAX_SLOTS"},
		{map[string]string{"MAX_TRACKS_PER_PEER": "0"}, "MAX_TRACKS_PER_PEER"},
	} {
		if _, err := load(tc.env); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one with %q", tc.env, err, tc.want)
		}
	}
}
