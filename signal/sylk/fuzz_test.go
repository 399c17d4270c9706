package sylk_test

import (
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/beepvoice/router/signal/sylk"
)

// FuzzParseRequest: the parser of client messages never panics, returns
// either a request of a known type with a transaction or a *ParseError,
// and never answers with an invalid transaction.
func FuzzParseRequest(f *testing.F) {
	for _, s := range []string{
		`{"sylkrtc":"ping","transaction":"t1"}`,
		`{"sylkrtc":"account-add","transaction":"t","account":"alice@example.com","password":"5f4dcc3b5aa765d61d8327deb882cf99","display_name":"Alice"}`,
		`{"sylkrtc":"account-register","transaction":"t","account":"alice@example.com"}`,
		`{"sylkrtc":"session-create","transaction":"t","account":"a@b","session":"s","uri":"c@d","sdp":"v=0\r\n"}`,
		`{"sylkrtc":"session-trickle","transaction":"t","session":"s","candidates":[{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":null}]}`,
		`{"sylkrtc":"videoroom-join","transaction":"t","account":"a@b","session":"s","uri":"r@c","sdp":"v=0","audio":true,"video":false}`,
		`{"sylkrtc":"videoroom-feed-attach","transaction":"t","session":"s","publisher":"p","feed":"f"}`,
		`{"sylkrtc":"videoroom-session-trickle","transaction":"t","session":"f","candidates":[]}`,
		`{"sylkrtc":"account-fetch-addressbook","transaction":"t"}`,
		`{"sylkrtc":"add_account","transaction":"t","account":"a@b","password":"5f4dcc3b5aa765d61d8327deb882cf99"}`,
		`{"sylkrtc":"ping","transaction":7}`, `{"transaction":"t"}`, `[]`, `nul`, ``,
	} {
		f.Add(sylk.ProtocolV2, []byte(s))
		f.Add(sylk.ProtocolV1, []byte(s))
	}
	f.Fuzz(func(t *testing.T, protocol string, data []byte) {
		r, err := sylk.ParseRequest(protocol, data)
		if err != nil {
			var pe *sylk.ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			if r != nil {
				t.Fatal("a request and an error")
			}
			if pe.Transaction != "" && (len(pe.Transaction) > 128 || !utf8.ValidString(pe.Transaction)) {
				t.Fatalf("error reply would carry an invalid transaction %q", pe.Transaction)
			}
			if pe.Error() == "" {
				t.Fatal("empty error text")
			}
			return
		}
		if r.Type == "" || r.Transaction == "" || !utf8.ValidString(r.Transaction) || len(r.Transaction) > 128 {
			t.Fatalf("accepted a request without a valid type or transaction: %+v", r)
		}
		if len(r.Cands) > 32 {
			t.Fatalf("accepted %d candidates", len(r.Cands))
		}
	})
}
