package claim

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxIDLen bounds user, client and conversation ids, in bytes. Ids end up
// in NATS subjects, whose control line the server limits, in SSE fields and
// in logs.
const MaxIDLen = 256

// ErrInvalidID is the error of Claim.Valid; every Extractor of this package
// refuses a claim whose id is not valid (Require answers 400, or 401 for a
// token).
var ErrInvalidID = fmt.Errorf("not a valid id (1 to %d bytes of printable UTF-8)", MaxIDLen)

// ValidID reports whether id may be used as a user, client (device) or
// conversation id: non-empty, at most MaxIDLen bytes, valid UTF-8, and only
// printable characters (unicode.IsPrint: letters, marks, numbers,
// punctuation, symbols and the ASCII space). That refuses control
// characters (C0, DEL, C1: NUL, newlines, escape sequences) and invisible
// or reordering ones (line separators, zero-width and bidi controls), so an
// id stays one line in SSE fields and logs and looks like what it is.
func ValidID(id string) bool {
	if id == "" || len(id) > MaxIDLen || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// Valid returns nil when both ids of c are valid (ValidID), or an
// ErrInvalidID naming the first bad field. The ids themselves are not
// repeated in the error: it ends up in responses and logs.
func (c Claim) Valid() error {
	if !ValidID(c.UserID) {
		return fmt.Errorf("userid is %w", ErrInvalidID)
	}
	if !ValidID(c.ClientID) {
		return fmt.Errorf("clientid is %w", ErrInvalidID)
	}
	return nil
}
