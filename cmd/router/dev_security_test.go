package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDevRefusesSecuritySettings: -dev lets everyone join everything and
// serves the demo's bites without a token, so it refuses to start, rather
// than silently override them, when security settings are given.
func TestDevRefusesSecuritySettings(t *testing.T) {
	// A valid key, so that only -dev can be the reason for a refusal.
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	key := filepath.Join(t.TempDir(), "auth.pem")
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	const host = "http://permissions.example.org"
	tests := []struct {
		name string
		env  map[string]string
		want []string // settings the error names; none: -dev starts
	}{
		{name: "permissions host", env: map[string]string{"PERMISSIONS_HOST": host}, want: []string{"PERMISSIONS_HOST"}},
		{name: "jwt key", env: map[string]string{"AUTH_JWT_PUBLIC_KEY": key}, want: []string{"AUTH_JWT_PUBLIC_KEY"}},
		{name: "both", env: map[string]string{"PERMISSIONS_HOST": host, "AUTH_JWT_PUBLIC_KEY": key}, want: []string{"PERMISSIONS_HOST", "AUTH_JWT_PUBLIC_KEY"}},
		{name: "jwt key with allow-all", env: map[string]string{"PERMISSIONS_HOST": "allow-all", "AUTH_JWT_PUBLIC_KEY": key}, want: []string{"AUTH_JWT_PUBLIC_KEY"}},
		{name: "none"},
		{name: "allow-all", env: map[string]string{"PERMISSIONS_HOST": "allow-all"}},
		{name: "blank", env: map[string]string{"PERMISSIONS_HOST": " ", "AUTH_JWT_PUBLIC_KEY": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(func(k string) string { return tt.env[k] }, true)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("-dev refused: %v", err)
				}
				if c.PermissionsHost != "allow-all" || c.JWTPublicKey != "" || !c.Dev {
					t.Fatalf("-dev config: permissions %q, jwt key %q, dev %v", c.PermissionsHost, c.JWTPublicKey, c.Dev)
				}
				return
			}
			if err == nil {
				t.Fatalf("-dev started with %v", tt.env)
			}
			msg := err.Error()
			// One line (main prints it under "router: invalid settings:"
			// and exits 2), naming each setting with its value and why.
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			for _, name := range tt.want {
				if !strings.Contains(msg, name+"=") || !strings.Contains(msg, tt.env[name]) {
					t.Errorf("error does not name %s=%q: %s", name, tt.env[name], msg)
				}
			}
			for _, name := range []string{"PERMISSIONS_HOST", "AUTH_JWT_PUBLIC_KEY"} {
				if !strings.Contains(strings.Join(tt.want, " "), name) && strings.Contains(msg, name) {
					t.Errorf("error names %s, which was not given: %s", name, msg)
				}
			}
			if !strings.Contains(msg, "-dev refuses") || !strings.Contains(msg, "without a token") {
				t.Errorf("error does not say why: %s", msg)
			}
		})
	}
}
