package claim

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestValidID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		want bool
	}{
		{"normal", "u-0123456789abcdef0123456789abcdef", true},
		{"non-ASCII printable", "zoë", true},
		{"symbols and space", "my phone ✓ (2)", true},
		{"longest", strings.Repeat("x", MaxIDLen), true},
		{"longest multi-byte", strings.Repeat("é", MaxIDLen/2), true},
		{"empty", "", false},
		{"too long", strings.Repeat("x", MaxIDLen+1), false},
		{"too long multi-byte", strings.Repeat("é", MaxIDLen/2) + "x", false},
		{"NUL", "a\x00b", false},
		{"newline", "\n", false},
		{"carriage return", "a\rb", false},
		{"tab", "a\tb", false},
		{"escape sequence", "\x1b[31m", false},
		{"DEL", "a\x7f", false},
		{"C1 control (NEL)", "a\u0085b", false},
		{"line separator", "a\u2028b", false},
		{"bidi override", "a\u202eb", false},
		{"zero width space", "a\u200bb", false},
		{"invalid UTF-8", "\xff", false},
		{"truncated UTF-8", "zo\xc3", false},
		{"encoded surrogate", "\xed\xa0\x80", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ValidID(tt.id); got != tt.want {
				t.Fatalf("ValidID(%q) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
}

func TestClaimValid(t *testing.T) {
	tests := []struct {
		name  string
		c     Claim
		field string // named in the error; "" for a valid claim
	}{
		{"valid", Claim{"zoë", "phone"}, ""},
		{"bad userid", Claim{"u\n", "phone"}, "userid"},
		{"empty userid", Claim{"", "phone"}, "userid"},
		{"bad clientid", Claim{"u", "\x1b[2J"}, "clientid"},
		{"both bad names the userid", Claim{"\xff", "\x00"}, "userid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Valid()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Valid() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidID) || !strings.HasPrefix(err.Error(), tt.field+" ") {
				t.Fatalf("Valid() = %v, want ErrInvalidID naming %s", err, tt.field)
			}
		})
	}
}

// TestRequireRefusesBadIDs sends real requests through Require: a claim
// whose id is not valid is answered like any other bad claim (400 for the
// X-User-Claim header, before the handler runs) with the field named, and
// so is an invalid claim from any other Extractor.
func TestRequireRefusesBadIDs(t *testing.T) {
	custom := func(r *http.Request) (Claim, error) {
		return Claim{UserID: r.URL.Query().Get("u"), ClientID: "c"}, nil
	}
	tests := []struct {
		name    string
		extract Extractor
		url     string
		header  string
		code    int
		body    string
	}{
		{"header ok", FromHeader, "/join/x", `{"userid":"zoë","clientid":"c"}`, http.StatusOK, "zoë:c"},
		{"header userid with NUL", FromHeader, "/join/x", `{"userid":"u\u0000","clientid":"c"}`, http.StatusBadRequest, "userid is not a valid id"},
		{"header clientid with escape", FromHeader, "/join/x", `{"userid":"u","clientid":"\u001b[31m"}`, http.StatusBadRequest, "clientid is not a valid id"},
		{"query clientid with newline", FromHeaderOrQuery, "/connect?userid=u&clientid=a%0Ab", "", http.StatusBadRequest, "clientid is not a valid id"},
		{"custom extractor ok", custom, "/connect?u=alice", "", http.StatusOK, "alice:c"},
		{"custom extractor bad id", custom, "/connect?u=%FF", "", http.StatusBadRequest, "userid is not a valid id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Require(tt.extract, func(w http.ResponseWriter, r *http.Request, c Claim) {
				_, _ = w.Write([]byte(c.String()))
			})
			r := httptest.NewRequest(http.MethodGet, tt.url, nil)
			if tt.header != "" {
				r.Header.Set(Header, tt.header)
			}
			rec := httptest.NewRecorder()
			h(rec, r)
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.body) {
				t.Fatalf("got %d %q, want %d %q", rec.Code, rec.Body.String(), tt.code, tt.body)
			}
		})
	}
}
