package claim

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func sign(t *testing.T, key *rsa.PrivateKey, method jwt.SigningMethod, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWT(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	path := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := LoadRSAPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	extract := JWT(pub)
	exp := time.Now().Add(time.Hour).Unix()
	good := sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u-1", "clientid": "c-1", "exp": exp})
	tests := []struct {
		name   string
		query  string
		header string
		forged bool
		want   Claim
		err    error
	}{
		{"query token", "?token=" + good, "", false, Claim{"u-1", "c-1"}, nil},
		{"bearer", "", "Bearer " + good, false, Claim{"u-1", "c-1"}, nil},
		{"bearer lower case", "", "bearer " + good, false, Claim{"u-1", "c-1"}, nil},
		{"bearer upper case", "", "BEARER " + good, false, Claim{"u-1", "c-1"}, nil},
		{"bearer mixed case", "", "bEaReR " + good, false, Claim{"u-1", "c-1"}, nil},
		{"bearer several spaces", "", "Bearer   " + good, false, Claim{"u-1", "c-1"}, nil},
		{"bearer without space", "", "Bearer" + good, false, Claim{}, ErrUnauthorized},
		{"bearer tab", "", "Bearer\t" + good, false, Claim{}, ErrUnauthorized},
		{"bearer alone", "", "Bearer", false, Claim{}, ErrUnauthorized},
		{"bearer no token", "", "bearer ", false, Claim{}, ErrUnauthorized},
		{"bearers scheme", "", "Bearers " + good, false, Claim{}, ErrUnauthorized},
		{"token scheme", "", "Token " + good, false, Claim{}, ErrUnauthorized},
		{"forged claim header is ignored", "", "", true, Claim{}, ErrUnauthorized},
		{"no token", "", "", false, Claim{}, ErrUnauthorized},
		{"basic auth", "", "Basic dTpw", false, Claim{}, ErrUnauthorized},
		{"garbage", "?token=abc", "", false, Claim{}, ErrUnauthorized},
		{"other key", "?token=" + sign(t, other, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "clientid": "c", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"expired", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "clientid": "c", "exp": time.Now().Add(-time.Minute).Unix()}), "", false, Claim{}, ErrUnauthorized},
		{"no expiry", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "clientid": "c"}), "", false, Claim{}, ErrUnauthorized},
		{"no client", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"userid with NUL", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u\x00", "clientid": "c", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"clientid with newline", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "clientid": "c\nX-Evil: 1", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"clientid with escape", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "u", "clientid": "\x1b[31mc", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"userid too long", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": strings.Repeat("u", MaxIDLen+1), "clientid": "c", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
		{"non-ASCII ids", "?token=" + sign(t, key, jwt.SigningMethodRS256, jwt.MapClaims{"userid": "zoë", "clientid": "téléphone", "exp": exp}), "", false, Claim{"zoë", "téléphone"}, nil},
		{"RS512 refused", "?token=" + sign(t, key, jwt.SigningMethodRS512, jwt.MapClaims{"userid": "u", "clientid": "c", "exp": exp}), "", false, Claim{}, ErrUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/connect"+tt.query, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			if tt.forged {
				r.Header.Set(Header, `{"userid":"victim","clientid":"x"}`)
			}
			got, err := extract(r)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) || got != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
			if err != nil && Status(err) != http.StatusUnauthorized {
				t.Fatalf("status %d", Status(err))
			}
		})
	}
	// Other schemes keep their own error.
	for _, h := range []string{"Basic dTpw", "Token " + good, "Bearers " + good, "Bearer\t" + good, "Bearer" + good} {
		r := httptest.NewRequest(http.MethodGet, "/connect", nil)
		r.Header.Set("Authorization", h)
		if _, err := extract(r); err == nil || !strings.Contains(err.Error(), "Authorization is not a Bearer token") {
			t.Errorf("Authorization %.12q…: error %v, want \"Authorization is not a Bearer token\"", h, err)
		}
	}
}
