package claim

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name  string
		value string
		want  Claim
		err   error
	}{
		{"ok", `{"userid":"u-1","clientid":"c-1"}`, Claim{"u-1", "c-1"}, nil},
		{"extra fields", `{"userid":"u-1","clientid":"c-1","x":1}`, Claim{"u-1", "c-1"}, nil},
		{"spaces", `  {"userid":"u","clientid":"c"} `, Claim{"u", "c"}, nil},
		{"missing", ``, Claim{}, ErrMissing},
		{"not json", `userid=u`, Claim{}, ErrMalformed},
		{"array", `["u","c"]`, Claim{}, ErrMalformed},
		{"empty user", `{"userid":"","clientid":"c"}`, Claim{}, ErrIncomplete},
		{"no client", `{"userid":"u"}`, Claim{}, ErrIncomplete},
		{"wrong type", `{"userid":1,"clientid":"c"}`, Claim{}, ErrMalformed},
		{"too long", `{"userid":"` + strings.Repeat("a", maxLen) + `","clientid":"c"}`, Claim{}, ErrTooLong},
		{"non-ASCII ids", `{"userid":"zoë","clientid":"téléphone ✓"}`, Claim{"zoë", "téléphone ✓"}, nil},
		{"userid with NUL", `{"userid":"u\u0000","clientid":"c"}`, Claim{}, ErrInvalidID},
		{"userid with newline", `{"userid":"u\nX-Evil: 1","clientid":"c"}`, Claim{}, ErrInvalidID},
		{"clientid with escape", `{"userid":"u","clientid":"\u001b[31mc"}`, Claim{}, ErrInvalidID},
		{"clientid with C1 control", `{"userid":"u","clientid":"c\u0085"}`, Claim{}, ErrInvalidID},
		{"clientid with bidi override", `{"userid":"u","clientid":"c\u202e"}`, Claim{}, ErrInvalidID},
		// encoding/json would turn \xff into U+FFFD, making different ids equal.
		{"invalid UTF-8", "{\"userid\":\"u\xff\",\"clientid\":\"c\"}", Claim{}, ErrMalformed},
		{"userid too long", `{"userid":"` + strings.Repeat("u", MaxIDLen+1) + `","clientid":"c"}`, Claim{}, ErrInvalidID},
		{"userid longest", `{"userid":"` + strings.Repeat("u", MaxIDLen) + `","clientid":"c"}`, Claim{strings.Repeat("u", MaxIDLen), "c"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.value)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q) error = %v, want %v", tt.value, err, tt.err)
			}
			if tt.err == nil && err != nil {
				t.Fatalf("Parse(%q) error = %v, want none", tt.value, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %q, want %q", tt.value, got, tt.want)
			}
		})
	}
}

func TestFromHeaderOrQuery(t *testing.T) {
	tests := []struct {
		name   string
		url    string
		header string
		want   Claim
		err    error
	}{
		{"query", "/connect?userid=u&clientid=c", "", Claim{"u", "c"}, nil},
		{"header wins", "/connect?userid=u&clientid=c", `{"userid":"h","clientid":"d"}`, Claim{"h", "d"}, nil},
		{"bad header is not overridden", "/connect?userid=u&clientid=c", `nope`, Claim{}, ErrMalformed},
		{"half query", "/connect?userid=u", "", Claim{}, ErrIncomplete},
		{"nothing", "/connect", "", Claim{}, ErrMissing},
		{"query non-ASCII", "/connect?userid=zo%C3%AB&clientid=c", "", Claim{"zoë", "c"}, nil},
		{"query userid with NUL", "/connect?userid=u%00&clientid=c", "", Claim{}, ErrInvalidID},
		{"query clientid with newline", "/connect?userid=u&clientid=c%0Ad", "", Claim{}, ErrInvalidID},
		{"query clientid with escape", "/connect?userid=u&clientid=%1B%5B31m", "", Claim{}, ErrInvalidID},
		{"query userid invalid UTF-8", "/connect?userid=%FF&clientid=c", "", Claim{}, ErrInvalidID},
		{"query userid too long", "/connect?userid=" + strings.Repeat("u", MaxIDLen+1) + "&clientid=c", "", Claim{}, ErrInvalidID},
		{"header with a bad id wins", "/connect?userid=u&clientid=c", `{"userid":"u","clientid":"\u0000"}`, Claim{}, ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.url, nil)
			if tt.header != "" {
				r.Header.Set(Header, tt.header)
			}
			got, err := FromHeaderOrQuery(r)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) || got != tt.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestRequire(t *testing.T) {
	h := Require(FromHeader, func(w http.ResponseWriter, r *http.Request, c Claim) {
		_, _ = w.Write([]byte(c.String()))
	})
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodPost, "/join/x", nil))
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "missing") {
		t.Fatalf("no claim: got %d %q", rec.Code, rec.Body.String())
	}
	rec = httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodPost, "/join/x", nil)
	r.Header.Set(Header, `{"userid":"u","clientid":"c"}`)
	h(rec, r)
	if rec.Code != http.StatusOK || rec.Body.String() != "u:c" {
		t.Fatalf("claim: got %d %q", rec.Code, rec.Body.String())
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`{"userid":"u","clientid":"c"}`)
	f.Add(`{"userid":"","clientid":"c"}`)
	f.Add(`{"userid":"u\u0000","clientid":"c\n"}`)
	f.Add("{\"userid\":\"\xff\",\"clientid\":\"zoë\"}")
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err == nil && (c.UserID == "" || c.ClientID == "") {
			t.Fatalf("accepted an incomplete claim from %q", s)
		}
		if err == nil && (!ValidID(c.UserID) || !ValidID(c.ClientID)) {
			t.Fatalf("accepted an invalid id from %q: %q", s, c)
		}
	})
}
