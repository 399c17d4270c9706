package claim

import (
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// ErrUnauthorized wraps every reason a token is refused: Require answers it
// with 401.
var ErrUnauthorized = errors.New("unauthorized")

// jwtClaims are the claims of Beep's tokens.
type jwtClaims struct {
	UserID   string `json:"userid"`
	ClientID string `json:"clientid"`
	jwt.RegisteredClaims
}

// JWT returns an Extractor that verifies Beep's RS256 token itself, from
// the query parameter token or an "Authorization: Bearer" header (scheme in
// any case), so that the router can face clients without backend-auth in
// front. It ignores X-User-Claim: a client could forge that header. A token
// whose userid or clientid is not a valid id (ValidID) is refused.
func JWT(key *rsa.PublicKey) Extractor {
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithExpirationRequired())
	keyFunc := func(*jwt.Token) (any, error) { return key, nil }
	return func(r *http.Request) (Claim, error) {
		tok := r.URL.Query().Get("token")
		if h := r.Header.Get("Authorization"); tok == "" && h != "" {
			var ok bool
			if tok, ok = bearer(h); !ok {
				return Claim{}, fmt.Errorf("%w: Authorization is not a Bearer token", ErrUnauthorized)
			}
		}
		if tok == "" {
			return Claim{}, fmt.Errorf("%w: no token", ErrUnauthorized)
		}
		var c jwtClaims
		if _, err := parser.ParseWithClaims(tok, &c, keyFunc); err != nil {
			return Claim{}, fmt.Errorf("%w: %v", ErrUnauthorized, err)
		}
		if c.UserID == "" || c.ClientID == "" {
			return Claim{}, fmt.Errorf("%w: token needs userid and clientid", ErrUnauthorized)
		}
		cl := Claim{UserID: c.UserID, ClientID: c.ClientID}
		if err := cl.Valid(); err != nil {
			return Claim{}, fmt.Errorf("%w: token %w", ErrUnauthorized, err)
		}
		return cl, nil
	}
}

// bearer returns the token of an Authorization value "Bearer <token>". The
// scheme is case-insensitive and followed by one or more spaces (RFC 9110
// §11.1, §11.4); ok is false for any other scheme.
func bearer(h string) (tok string, ok bool) {
	const scheme = "Bearer"
	if len(h) <= len(scheme) || !strings.EqualFold(h[:len(scheme)], scheme) || h[len(scheme)] != ' ' {
		return "", false
	}
	return strings.TrimLeft(h[len(scheme):], " "), true
}

// LoadRSAPublicKey reads a PEM RSA public key (PKIX or PKCS#1).
func LoadRSAPublicKey(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := jwt.ParseRSAPublicKeyFromPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
