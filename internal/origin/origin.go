// Package origin decides which browser origins may use the router's
// WebSocket and HTTP APIs.
package origin

import (
	"net/http"
	"net/url"
	"strings"
)

// Policy accepts requests without an Origin header (native clients), from
// the router's own origin, and from the listed origins; "*" accepts all.
type Policy struct {
	any     bool
	allowed map[string]bool
}

// New returns a Policy for the listed origins ("https://app.example.org").
func New(allowed []string) Policy {
	p := Policy{allowed: make(map[string]bool)}
	for _, o := range allowed {
		if o == "*" {
			p.any = true
		}
		p.allowed[strings.ToLower(strings.TrimRight(o, "/"))] = true
	}
	return p
}

// Check reports whether r's Origin is accepted. It has the signature of
// websocket.Upgrader.CheckOrigin.
func (p Policy) Check(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" || p.any || p.allowed[strings.ToLower(o)] {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

// List returns the listed origins, for CORS.
func (p Policy) List() []string {
	var out []string
	for o := range p.allowed {
		out = append(out, o)
	}
	return out
}
