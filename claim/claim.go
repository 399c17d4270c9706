// Package claim extracts the caller's identity from an HTTP request.
//
// In a Beep deployment traefik forwards every request to backend-auth, which
// verifies the user's JWT and adds the X-User-Claim header:
//
//	X-User-Claim: {"userid":"u-<32 hex>","clientid":"<device id>"}
//
// The router trusts that header only because backend-auth sits in front of it;
// its HTTP port must not be reachable by clients directly.
package claim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"
)

// Header is the name of the header backend-auth adds to verified requests.
const Header = "X-User-Claim"

// maxLen bounds the header value we are willing to parse.
const maxLen = 4096

// Errors returned by Parse (and ErrInvalidID). All of them mean the request
// is answered 400.
var (
	ErrMissing    = errors.New("missing " + Header + " header")
	ErrMalformed  = errors.New(Header + " is not a JSON object")
	ErrIncomplete = errors.New(Header + " needs a non-empty userid and clientid")
	ErrTooLong    = errors.New(Header + " is too long")
)

// Claim identifies one device (client) of one user.
type Claim struct {
	UserID   string `json:"userid"`
	ClientID string `json:"clientid"`
}

// String returns "user:client", the form used in logs and SSE ids.
func (c Claim) String() string { return c.UserID + ":" + c.ClientID }

// Parse decodes and validates the value of an X-User-Claim header.
func Parse(value string) (Claim, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return Claim{}, ErrMissing
	}
	if len(value) > maxLen {
		return Claim{}, ErrTooLong
	}
	if !utf8.ValidString(value) {
		// encoding/json would replace the bad bytes by U+FFFD, so that
		// different ids would read as the same.
		return Claim{}, fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	var c Claim
	if err := json.Unmarshal([]byte(value), &c); err != nil {
		return Claim{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if c.UserID == "" || c.ClientID == "" {
		return Claim{}, ErrIncomplete
	}
	if err := c.Valid(); err != nil {
		return Claim{}, fmt.Errorf("%s %w", Header, err)
	}
	return c, nil
}

// Extractor returns the verified identity of a request's caller.
type Extractor func(r *http.Request) (Claim, error)

// FromHeader is the production Extractor: it reads X-User-Claim.
func FromHeader(r *http.Request) (Claim, error) {
	return Parse(r.Header.Get(Header))
}

// FromHeaderOrQuery reads X-User-Claim and, when the header is absent, the
// query parameters userid and clientid. It exists for local demos (-dev),
// where no backend-auth runs and a browser's WebSocket cannot set headers.
// Never use it where clients can reach the router directly.
func FromHeaderOrQuery(r *http.Request) (Claim, error) {
	if r.Header.Get(Header) != "" {
		return FromHeader(r)
	}
	q := r.URL.Query()
	c := Claim{UserID: q.Get("userid"), ClientID: q.Get("clientid")}
	if c.UserID == "" && c.ClientID == "" {
		return Claim{}, ErrMissing
	}
	if c.UserID == "" || c.ClientID == "" {
		return Claim{}, ErrIncomplete
	}
	if err := c.Valid(); err != nil {
		return Claim{}, fmt.Errorf("query parameter %w", err)
	}
	return c, nil
}

// Handler is an http handler that needs the caller's identity.
type Handler func(w http.ResponseWriter, r *http.Request, c Claim)

// Require wraps h so that it only runs with a valid claim; a request without
// one is answered 400 with the reason in the body (401 for a refused token).
// The ids of any Extractor's claim are checked (Claim.Valid), so a custom
// Extractor cannot let a bad id through either.
func Require(extract Extractor, h Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := extract(r)
		if err == nil {
			err = c.Valid()
		}
		if err != nil {
			http.Error(w, err.Error(), Status(err))
			return
		}
		h(w, r, c)
	}
}

// Status is the HTTP status for an Extractor's error: 401 for a refused
// token, 400 for a bad claim.
func Status(err error) int {
	if errors.Is(err, ErrUnauthorized) {
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
}
