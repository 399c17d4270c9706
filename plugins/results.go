package plugins

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/beepvoice/router/plugins/protocol"
)

// Headers the host sets on published results.
const (
	HeaderPlugin       = "Beep-Plugin"
	HeaderConversation = "Beep-Conversation"
	HeaderUser         = "Beep-User"
	HeaderKind         = "Beep-Result-Kind"
)

// publish checks a result from the plugin and publishes it on NATS.
func (st *Stage) publish(r *protocol.Result) {
	subject := r.Subject
	if subject == "" {
		subject = st.subject
	}
	if err := st.check(subject, r); err != nil {
		st.stats.rejected.Add(1)
		if ok, n := st.badLog.Allow(time.Now()); ok {
			st.log.Warn("plugin result rejected", "subject", truncate(subject, 80), "err", err, "suppressed", n)
		}
		return
	}
	if st.onResult != nil {
		st.onResult(r)
	}
	if st.nc == nil {
		st.stats.unpublished.Add(1)
		return
	}
	m := nats.NewMsg(subject)
	m.Data = r.Data
	m.Header.Set(HeaderPlugin, st.name)
	if r.Conversation != "" {
		m.Header.Set(HeaderConversation, r.Conversation)
	}
	if r.User != "" {
		m.Header.Set(HeaderUser, r.User)
	}
	if r.Kind != "" {
		m.Header.Set(HeaderKind, r.Kind)
	}
	if err := st.nc.PublishMsg(m); err != nil {
		st.stats.unpublished.Add(1)
		if ok, n := st.badLog.Allow(time.Now()); ok {
			st.log.Warn("plugin result not published", "subject", subject, "err", err, "suppressed", n)
		}
		return
	}
	st.stats.results.Add(1)
}

// check validates a result: a plugin is not trusted to send sane ones.
func (st *Stage) check(subject string, r *protocol.Result) error {
	if !validSubject(subject, false) {
		return errors.New("not a NATS subject")
	}
	allowed := false
	for _, a := range st.allowed {
		if subjectMatches(a, subject) {
			allowed = true
			break
		}
	}
	if !allowed {
		return fmt.Errorf("subject not allowed (allowed: %v)", st.allowed)
	}
	if len(r.Data) > st.s.MaxResultSize {
		return fmt.Errorf("data of %d bytes exceeds max_result_size %d", len(r.Data), st.s.MaxResultSize)
	}
	for _, f := range [...]struct{ name, v string }{{"conversation", r.Conversation}, {"user", r.User}, {"kind", r.Kind}} {
		if len(f.v) > 256 || !utf8.ValidString(f.v) || strings.ContainsFunc(f.v, isControl) {
			return fmt.Errorf("bad %s", f.name)
		}
	}
	if r.Conversation != "" && !matchConversation(st.s.Conversations, r.Conversation) {
		return fmt.Errorf("conversation %q is not one the plugin sees", truncate(r.Conversation, 64))
	}
	return nil
}

func isControl(r rune) bool { return r < ' ' || r == 0x7f }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
