package sylk

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/pion/webrtc/v3"

	"github.com/beepvoice/router/claim"
)

// The WebSocket subprotocols: sylkRTC-2 is what sylkrtc.js speaks;
// sylkRTC-1 (the seed document's names) covers accounts and registration.
const (
	ProtocolV2 = "sylkRTC-2"
	ProtocolV1 = "sylkRTC-1"
)

// Request types of sylkRTC-2, and the sylkRTC-1 names mapped onto them.
const (
	reqPing              = "ping"
	reqAccountAdd        = "account-add"
	reqAccountRemove     = "account-remove"
	reqAccountRegister   = "account-register"
	reqAccountUnregister = "account-unregister"
	reqSessionCreate     = "session-create"
	reqSessionAnswer     = "session-answer"
	reqSessionTrickle    = "session-trickle"
	reqSessionTerminate  = "session-terminate"
	reqRoomJoin          = "videoroom-join"
	reqRoomLeave         = "videoroom-leave"
	reqRoomTrickle       = "videoroom-session-trickle"
	reqFeedAttach        = "videoroom-feed-attach"
	reqFeedAnswer        = "videoroom-feed-answer"
	reqFeedDetach        = "videoroom-feed-detach"
	reqRoomConfigure     = "videoroom-configure"
	reqRoomInvite        = "videoroom-invite"
	reqRoomToggleHand    = "videoroom-toggle-hand"
	reqRoomMuteAudio     = "videoroom-mute-audio-participants"
)

// v1Names maps the sylkRTC-1 request names of the seed document to their
// sylkRTC-2 equivalents; on a sylkRTC-1 connection only these (and ping)
// are known.
var v1Names = map[string]string{
	"add_account":    reqAccountAdd,
	"remove_account": reqAccountRemove,
	"register":       reqAccountRegister,
	"unregister":     reqAccountUnregister,
	reqPing:          reqPing,
}

// notSupported are the requests sylkrtc.js may send that the router does
// not implement: each gets an error reply "not supported", which the
// client takes as harmless.
var notSupported = map[string]bool{
	"account-devicetoken":              true,
	"account-message":                  true,
	"account-disposition-notification": true,
	"account-sync-conversations":       true,
	"account-mark-conversation-read":   true,
	"account-remove-message":           true,
	"account-remove-conversation":      true,
	"account-fetch-addressbook":        true,
	"account-update-addressbook":       true,
	"lookup-public-key":                true,
	"session-update":                   true,
	"session-message":                  true,
	"session-dtmf-info":                true,
	"session-keypress":                 true,
	"videoroom-message":                true,
	"videoroom-composing-indication":   true,
	"videoroom-session-update":         true,
}

// Bounds of the fields of one request, besides MAX_MESSAGE for the whole.
const (
	maxTransaction   = 128 // a uuid is 36
	maxID            = 128 // session and feed ids: uuids
	maxCandidates    = 32  // candidates in one trickle request
	maxDisplayName   = 256
	maxUserAgent     = 512
	maxCandidateLine = 1024
	maxActive        = 2  // active_participants of videoroom-configure
	maxInvitees      = 32 // participants of one videoroom-invite
)

// roomRequestRate and roomRequestBurst bound a socket's room requests
// (configure, invite, raised hands, mute everyone) per second, each of
// which goes to every member of the room, on every router of a cluster.
const (
	roomRequestRate  = 5
	roomRequestBurst = 20
)

// Candidate is one trickled ICE candidate, an RTCIceCandidate in JSON.
// A null sdpMid or sdpMLineIndex is accepted.
type Candidate struct {
	Candidate        string  `json:"candidate"`
	SDPMid           *string `json:"sdpMid"`
	SDPMLineIndex    *uint16 `json:"sdpMLineIndex"`
	UsernameFragment *string `json:"usernameFragment"`
}

// init converts c for pion.
func (c Candidate) init() webrtc.ICECandidateInit {
	return webrtc.ICECandidateInit{Candidate: strings.TrimPrefix(c.Candidate, "a="), SDPMid: c.SDPMid, SDPMLineIndex: c.SDPMLineIndex, UsernameFragment: c.UsernameFragment}
}

// Request is one client request, parsed and validated: Type is the
// sylkRTC-2 name whatever the subprotocol; the other fields are those of
// the contract that the type uses (the others stay empty).
type Request struct {
	Type        string
	Transaction string

	Account     string `json:"account"`
	Password    string `json:"password"`
	DisplayName string `json:"display_name"`
	UserAgent   string `json:"user_agent"`

	Session   string      `json:"session"`
	URI       string      `json:"uri"`
	SDP       string      `json:"sdp"`
	Publisher string      `json:"publisher"`
	Feed      string      `json:"feed"`
	Audio     *bool       `json:"audio"`
	Video     *bool       `json:"video"`
	Cands     []Candidate `json:"candidates"`

	// Active is videoroom-configure's active_participants (publisher ids).
	Active []string `json:"active_participants"`
	// Participants is videoroom-invite's list of accounts.
	Participants []string `json:"participants"`
	// SessionID is videoroom-toggle-hand's optional publisher id whose
	// hand is toggled (default: the requester's).
	SessionID string `json:"session_id"`
}

// envelope is what every message has.
type envelope struct {
	Sylkrtc     *string `json:"sylkrtc"`
	Transaction *string `json:"transaction"`
}

// ParseError is a message the router refuses. Transaction is the
// message's transaction when it had a usable one, so that the error reply
// carries it; empty otherwise.
type ParseError struct {
	Transaction string
	// Known is set when the message was a request of a type the router
	// knows (its fields were wrong), false for a message that is not a
	// request at all or of an unknown type.
	Known bool
	Err   error
}

// Error implements error.
func (e *ParseError) Error() string { return e.Err.Error() }

// Unwrap returns the cause.
func (e *ParseError) Unwrap() error { return e.Err }

// Errors of ParseRequest.
var (
	ErrNotJSON       = errors.New("invalid JSON: not a JSON object")
	ErrNoSylkrtc     = errors.New(`invalid message: no "sylkrtc" string`)
	ErrNoTransaction = errors.New("invalid request: no transaction")
	ErrUnknownType   = errors.New("unknown request")
	ErrNotSupported  = errors.New("not supported")
)

// ParseRequest parses one message of a connection speaking protocol
// (ProtocolV1 or ProtocolV2) and validates its fields for its type. Every
// error is a *ParseError. A request that is known but not supported by the
// router returns a ParseError wrapping ErrNotSupported.
func ParseRequest(protocol string, data []byte) (*Request, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 || data[0] != '{' {
		return nil, &ParseError{Err: ErrNotJSON}
	}
	var env envelope
	if err := json.Unmarshal(data, &env); err != nil {
		return nil, &ParseError{Err: ErrNotJSON}
	}
	if env.Sylkrtc == nil {
		return nil, &ParseError{Err: ErrNoSylkrtc}
	}
	var tx string
	if env.Transaction != nil && validID(*env.Transaction, maxTransaction) {
		tx = *env.Transaction
	}
	typ := *env.Sylkrtc
	if protocol == ProtocolV1 {
		v2, ok := v1Names[typ]
		if !ok {
			return nil, &ParseError{Transaction: tx, Err: fmt.Errorf("%w %q on %s", ErrUnknownType, clip(typ), ProtocolV1)}
		}
		typ = v2
	}
	if notSupported[typ] {
		if tx == "" {
			return nil, &ParseError{Known: true, Err: ErrNoTransaction}
		}
		return nil, &ParseError{Transaction: tx, Known: true, Err: fmt.Errorf("%s: %w", typ, ErrNotSupported)}
	}
	check, ok := validators[typ]
	if !ok {
		return nil, &ParseError{Transaction: tx, Err: fmt.Errorf("%w %q", ErrUnknownType, clip(typ))}
	}
	if tx == "" {
		return nil, &ParseError{Known: true, Err: ErrNoTransaction}
	}
	r := &Request{Type: typ, Transaction: tx}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, &ParseError{Transaction: tx, Known: true, Err: fmt.Errorf("invalid %s: %v", typ, fieldError(err))}
	}
	if err := check(r); err != nil {
		return nil, &ParseError{Transaction: tx, Known: true, Err: fmt.Errorf("invalid %s: %w", typ, err)}
	}
	return r, nil
}

// fieldError names the field of a JSON type error, without echoing the
// client's value.
func fieldError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q must be a %s", te.Field, te.Type.String())
	}
	return "malformed JSON"
}

// clip bounds a client string quoted in an error or a log.
func clip(s string) string {
	if len(s) > 64 {
		s = s[:64]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		return s + "…"
	}
	return s
}

// validators check the fields each request type needs.
var validators = map[string]func(*Request) error{
	reqPing: func(*Request) error { return nil },
	reqAccountAdd: func(r *Request) error {
		if err := needURI("account", r.Account); err != nil {
			return err
		}
		if !validHA1(r.Password) {
			return errors.New("password must be an HA1: 32 hexadecimal digits")
		}
		if len(r.DisplayName) > maxDisplayName || !utf8.ValidString(r.DisplayName) {
			return errors.New("display_name too long or not UTF-8")
		}
		if len(r.UserAgent) > maxUserAgent {
			return errors.New("user_agent too long")
		}
		return nil
	},
	reqAccountRemove:     needAccount,
	reqAccountRegister:   needAccount,
	reqAccountUnregister: needAccount,
	reqSessionCreate: func(r *Request) error {
		return all(needAccount(r), needSession(r), needURI("uri", r.URI), needSDP(r))
	},
	reqSessionAnswer:    func(r *Request) error { return all(needSession(r), needSDP(r)) },
	reqSessionTrickle:   func(r *Request) error { return all(needSession(r), needCandidates(r)) },
	reqSessionTerminate: needSession,
	reqRoomJoin: func(r *Request) error {
		return all(needAccount(r), needSession(r), needURI("uri", r.URI), needSDP(r))
	},
	reqRoomLeave:   needSession,
	reqRoomTrickle: func(r *Request) error { return all(needSession(r), needCandidates(r)) },
	reqFeedAttach: func(r *Request) error {
		if err := needSession(r); err != nil {
			return err
		}
		if !validID(r.Publisher, maxID) {
			return errors.New("publisher missing or invalid")
		}
		return needFeed(r)
	},
	reqFeedAnswer: func(r *Request) error { return all(needSession(r), needFeed(r), needSDP(r)) },
	reqFeedDetach: func(r *Request) error { return all(needSession(r), needFeed(r)) },
	reqRoomConfigure: func(r *Request) error {
		if err := needSession(r); err != nil {
			return err
		}
		if r.Active == nil || len(r.Active) > maxActive {
			return fmt.Errorf("active_participants must be a list of at most %d ids", maxActive)
		}
		for _, id := range r.Active {
			if !validID(id, maxID) {
				return errors.New("active_participants: invalid id")
			}
		}
		return nil
	},
	reqRoomInvite: func(r *Request) error {
		if err := needSession(r); err != nil {
			return err
		}
		if len(r.Participants) == 0 || len(r.Participants) > maxInvitees {
			return fmt.Errorf("participants must list 1 to %d accounts", maxInvitees)
		}
		for _, p := range r.Participants {
			if err := needURI("participants", p); err != nil {
				return err
			}
		}
		return nil
	},
	reqRoomToggleHand: func(r *Request) error {
		if err := needSession(r); err != nil {
			return err
		}
		if r.SessionID != "" && !validID(r.SessionID, maxID) {
			return errors.New("session_id invalid")
		}
		return nil
	},
	reqRoomMuteAudio: needSession,
}

// all returns the first error of errs.
func all(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func needAccount(r *Request) error { return needURI("account", r.Account) }

func needSession(r *Request) error {
	if !validID(r.Session, maxID) {
		return errors.New("session missing or invalid")
	}
	return nil
}

func needFeed(r *Request) error {
	if !validID(r.Feed, maxID) {
		return errors.New("feed missing or invalid")
	}
	return nil
}

func needSDP(r *Request) error {
	if !strings.HasPrefix(r.SDP, "v=0") {
		return errors.New("sdp missing or not an SDP description")
	}
	return nil
}

func needCandidates(r *Request) error {
	if r.Cands == nil {
		return errors.New("candidates missing")
	}
	if len(r.Cands) > maxCandidates {
		return fmt.Errorf("more than %d candidates in one request", maxCandidates)
	}
	for _, c := range r.Cands {
		if len(c.Candidate) > maxCandidateLine || !utf8.ValidString(c.Candidate) {
			return errors.New("candidate too long or not UTF-8")
		}
	}
	return nil
}

// needURI checks a SIP address of record: user@domain, printable, no
// spaces, with an optional "sip:" scheme.
func needURI(field, v string) error {
	if !validAOR(v) {
		return fmt.Errorf("%s must be a SIP address user@domain", field)
	}
	return nil
}

// validAOR reports whether v is an address of record the router accepts.
func validAOR(v string) bool {
	v = strings.TrimPrefix(v, "sip:")
	at := strings.IndexByte(v, '@')
	if at <= 0 || at == len(v)-1 || strings.Count(v, "@") != 1 || !claim.ValidID(v) {
		return false
	}
	return !strings.ContainsAny(v, " \t<>\"")
}

// validID accepts client-chosen ids (transactions, sessions, feeds):
// non-empty, at most max bytes, printable.
func validID(v string, max int) bool { return len(v) <= max && claim.ValidID(v) }

// validHA1 reports whether v is 32 hexadecimal digits.
func validHA1(v string) bool {
	if len(v) != 32 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// normalizeAOR drops a "sip:" scheme and lower-cases the domain: the key of
// an account.
func normalizeAOR(v string) string {
	v = strings.TrimPrefix(v, "sip:")
	at := strings.LastIndexByte(v, '@')
	if at < 0 {
		return v
	}
	return v[:at+1] + strings.ToLower(v[at+1:])
}

// domainOf returns the domain of an address of record.
func domainOf(aor string) string {
	return aor[strings.LastIndexByte(aor, '@')+1:]
}
