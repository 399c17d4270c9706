package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestLoadConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		dev     bool
		wantErr string // substring naming the bad setting; "" for success
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.Listen != ":80" || c.NATS != nil || c.PermissionsHost != "http://permissions" || c.UDPPort != 0 || c.PermTimeout != 5*time.Second {
				t.Fatalf("defaults: %+v", c)
			}
		}},
		{name: "dev", dev: true, env: map[string]string{"NATS": "nats://x:4222", "PERMISSIONS_HOST": "allow-all"}, check: func(t *testing.T, c config) {
			if c.Listen != ":8080" || c.NATS != nil || c.PermissionsHost != "allow-all" {
				t.Fatalf("dev: %+v", c)
			}
		}},
		{name: "external nats list", env: map[string]string{"NATS": "nats://a:4222, nats://b:4222"}, check: func(t *testing.T, c config) {
			if len(c.NATS) != 2 || c.NATS[1] != "nats://b:4222" {
				t.Fatalf("NATS: %v", c.NATS)
			}
		}},
		{name: "media", env: map[string]string{"UDP_PORT": "50000", "ICE_IPS": "127.0.0.1", "PUBLIC_IPS": "203.0.113.7", "ICE_SERVERS": "stun:stun.example.org:3478"}, check: func(t *testing.T, c config) {
			if c.UDPPort != 50000 || len(c.ICEIPs) != 1 || c.PublicIPs[0] != "203.0.113.7" || len(c.ICEServers) != 1 {
				t.Fatalf("media: %+v", c)
			}
		}},
		{name: "allow-all", env: map[string]string{"PERMISSIONS_HOST": "allow-all"}},
		{name: "bad listen", env: map[string]string{"LISTEN": "eighty"}, wantErr: "LISTEN"},
		{name: "bad nats", env: map[string]string{"NATS": "localhost"}, wantErr: "NATS"},
		{name: "bad permissions", env: map[string]string{"PERMISSIONS_HOST": "permissions"}, wantErr: "PERMISSIONS_HOST"},
		{name: "bad udp port", env: map[string]string{"UDP_PORT": "70000"}, wantErr: "UDP_PORT"},
		{name: "ice sockets per peer", env: map[string]string{"ICE_SOCKETS": "per-peer"}, check: func(t *testing.T, c config) {
			if !c.ICEPerPeer || c.UDPPort != 0 {
				t.Fatalf("ICE_SOCKETS=per-peer: %+v", c)
			}
		}},
		{name: "bad ice sockets", env: map[string]string{"ICE_SOCKETS": "one"}, wantErr: "ICE_SOCKETS"},
		{name: "bad ice ip", env: map[string]string{"ICE_IPS": "127.0.0.1,localhost"}, wantErr: "ICE_IPS"},
		{name: "bad public ip", env: map[string]string{"PUBLIC_IPS": "example.org"}, wantErr: "PUBLIC_IPS"},
		{name: "turn without credentials", env: map[string]string{"ICE_SERVERS": "turn:turn.example.org"}, wantErr: "ICE_SERVERS"},
		{name: "bad ice url", env: map[string]string{"ICE_SERVERS": "http://x"}, wantErr: "ICE_SERVERS"},
		{name: "bad duration", env: map[string]string{"CONNECT_TIMEOUT": "soon"}, wantErr: "CONNECT_TIMEOUT"},
		{name: "negative duration", env: map[string]string{"PERMISSIONS_TIMEOUT": "-1s"}, wantErr: "PERMISSIONS_TIMEOUT"},
		{name: "bad log format", env: map[string]string{"LOG_FORMAT": "xml"}, wantErr: "LOG_FORMAT"},
		{name: "cluster auto: off with embedded NATS", check: func(t *testing.T, c config) {
			if c.Cluster {
				t.Fatal("CLUSTER=auto is on with embedded NATS")
			}
		}},
		{name: "cluster auto: on with external NATS", env: map[string]string{"NATS": "nats://a:4222"}, check: func(t *testing.T, c config) {
			if !c.Cluster || c.ClusterHeartbeat != 500*time.Millisecond || c.MembershipReplicas != 1 {
				t.Fatalf("cluster: %v %v %v", c.Cluster, c.ClusterHeartbeat, c.MembershipReplicas)
			}
		}},
		{name: "cluster off", env: map[string]string{"NATS": "nats://a:4222", "CLUSTER": "off"}, check: func(t *testing.T, c config) {
			if c.Cluster {
				t.Fatal("CLUSTER=off is on")
			}
		}},
		{name: "cluster on with embedded NATS", env: map[string]string{"CLUSTER": "on"}, check: func(t *testing.T, c config) {
			if !c.Cluster {
				t.Fatal("CLUSTER=on is off")
			}
		}},
		{name: "bad cluster", env: map[string]string{"CLUSTER": "maybe"}, wantErr: "CLUSTER"},
		{name: "bad membership replicas", env: map[string]string{"MEMBERSHIP_REPLICAS": "9"}, wantErr: "MEMBERSHIP_REPLICAS"},
		{name: "bad log level", env: map[string]string{"LOG_LEVEL": "loud"}, wantErr: "LOG_LEVEL"},
		{name: "bad slots", env: map[string]string{"MAX_SLOTS": "0"}, wantErr: "MAX_SLOTS"},
		{name: "two errors at once", env: map[string]string{"UDP_PORT": "x", "LOG_FORMAT": "xml"}, wantErr: "UDP_PORT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(func(k string) string { return tt.env[k] }, tt.dev)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestDefaultPipelinePrints(t *testing.T) {
	c, err := pipelineConfig("", registry())
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"permission-gate", "forwarder", "bite-chunker", "nats-sink", "max_duration: 5s", "bite_subject: bite"} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("default pipeline lacks %q:\n%s", want, b)
		}
	}
	// What -print-pipeline prints is a valid PIPELINE file.
	if _, err := pipelineConfig(writePipeline(t, string(b)), registry()); err != nil {
		t.Fatalf("printed pipeline does not parse: %v\n%s", err, b)
	}
}

// TestREADMEDocumentsEverySetting keeps the README's settings table in step
// with the settings the router reads.
func TestREADMEDocumentsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		row := "| `" + s.name + "` | " + func() string {
			if s.def == "" {
				return "|"
			}
			return "`" + s.def + "` |"
		}()
		if !strings.Contains(string(b), row) {
			t.Errorf("README lacks the row for %s with default %q (want %q)", s.name, s.def, row)
		}
	}
}
