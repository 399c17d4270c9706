// Package permissions asks Beep's backend-permissions whether a user may
// join a conversation. It fails closed: an answer that is not a clear yes
// is a no.
package permissions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Errors of Check. ErrDenied is the service's own no; ErrUnavailable means
// the question could not be answered, which also denies.
var (
	ErrDenied      = errors.New("permission denied")
	ErrUnavailable = errors.New("permission service unavailable")
)

// Checker decides whether a user may join a conversation.
type Checker interface {
	// Check returns nil when userID may join convID.
	Check(ctx context.Context, userID, convID string) error
}

// AllowAll lets everyone in. For demos only.
type AllowAll struct{}

// Check always allows.
func (AllowAll) Check(context.Context, string, string) error { return nil }

// Client asks backend-permissions over HTTP:
//
//	GET {Host}/user/{userid}/conversation/{conversationid}
//
// 200 allows; 401 and 403 deny; anything else, a timeout or a network error
// is ErrUnavailable. Redirects are never followed: a 3xx is an answer that is
// not a yes, so it is ErrUnavailable too (a redirect to any page that answers
// 200 would otherwise let anyone in).
type Client struct {
	host string
	http *http.Client
}

// DefaultTimeout bounds one permission check.
const DefaultTimeout = 5 * time.Second

// NewClient returns a Client for the service at host (e.g.
// "http://permissions"). A zero timeout means DefaultTimeout.
func NewClient(host string, timeout time.Duration) (*Client, error) {
	u, err := url.Parse(host)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("permissions host %q: want an http(s) URL", host)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{host: strings.TrimRight(host, "/"), http: &http.Client{
		Timeout:       timeout,
		CheckRedirect: noRedirects,
	}}, nil
}

// noRedirects makes the http.Client return a 3xx answer as it is, which
// Check then treats as unavailable.
func noRedirects(*http.Request, []*http.Request) error {
	return http.ErrUseLastResponse
}

// Check asks the service.
func (c *Client) Check(ctx context.Context, userID, convID string) error {
	u := c.host + "/user/" + url.PathEscape(userID) + "/conversation/" + url.PathEscape(convID)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch resp.StatusCode {
	case http.StatusOK, http.StatusNoContent:
		return nil
	case http.StatusUnauthorized, http.StatusForbidden:
		return ErrDenied
	default:
		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			// The target is not named: it is not ours to log.
			return fmt.Errorf("%w: status %d (redirect not followed)", ErrUnavailable, resp.StatusCode)
		}
		return fmt.Errorf("%w: status %d", ErrUnavailable, resp.StatusCode)
	}
}
