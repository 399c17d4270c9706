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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.value)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q) error = %v, want %v", tt.value, err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.value, got, tt.want)
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.url, nil)
			if tt.header != "" {
				r.Header.Set(Header, tt.header)
			}
			got, err := FromHeaderOrQuery(r)
			if !errors.Is(err, tt.err) || got != tt.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
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
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err == nil && (c.UserID == "" || c.ClientID == "") {
			t.Fatalf("accepted an incomplete claim from %q", s)
		}
	})
}
