package sylk

import (
	"bufio"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Accounts are the local accounts: address of record → HA1
// (md5(user:domain:password), lower-case hex), as read from a file of
// "account:ha1" lines.
type Accounts struct {
	ha1     map[string]string
	domains map[string]bool
}

// maxAccountsFile bounds the accounts file (a million accounts is about
// 60 MB): a wrong path (a device, a log) fails instead of eating memory.
const maxAccountsFile = 64 << 20

// LoadAccounts reads an accounts file: one "account:ha1" line per account
// (e.g. "alice@example.com:5f4dcc3b5aa765d61d8327deb882cf99"); blank lines
// and lines starting with # are ignored. The account is a SIP address
// user@domain; the HA1 is 32 hexadecimal digits. An invalid line fails the
// whole file, naming the line.
func LoadAccounts(path string) (*Accounts, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("sylk accounts: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > maxAccountsFile {
		return nil, fmt.Errorf("sylk accounts %s: larger than %d bytes", path, maxAccountsFile)
	}
	a := &Accounts{ha1: make(map[string]string), domains: make(map[string]bool)}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 4096)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ':')
		if i < 0 {
			return nil, fmt.Errorf("sylk accounts %s:%d: want account:ha1", path, n)
		}
		aor, ha1 := strings.TrimSpace(line[:i]), strings.TrimSpace(line[i+1:])
		if !validAOR(aor) {
			return nil, fmt.Errorf("sylk accounts %s:%d: the account must be a SIP address user@domain", path, n)
		}
		if !validHA1(ha1) {
			return nil, fmt.Errorf("sylk accounts %s:%d: the HA1 must be 32 hexadecimal digits", path, n)
		}
		aor = normalizeAOR(aor)
		if _, dup := a.ha1[aor]; dup {
			return nil, fmt.Errorf("sylk accounts %s:%d: account listed twice", path, n)
		}
		a.ha1[aor] = strings.ToLower(ha1)
		a.domains[domainOf(aor)] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("sylk accounts %s:%d: %w", path, n+1, err)
	}
	return a, nil
}

// Len returns the number of accounts.
func (a *Accounts) Len() int {
	if a == nil {
		return 0
	}
	return len(a.ha1)
}

// Has reports whether aor is a local account.
func (a *Accounts) Has(aor string) bool {
	if a == nil {
		return false
	}
	_, ok := a.ha1[normalizeAOR(aor)]
	return ok
}

// Check reports whether ha1 is aor's HA1, in constant time.
func (a *Accounts) Check(aor, ha1 string) bool {
	if a == nil {
		return false
	}
	want, ok := a.ha1[normalizeAOR(aor)]
	if !ok {
		// Compare anyway, so that an unknown account takes as long.
		want = "00000000000000000000000000000000"
	}
	return subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(ha1))) == 1 && ok
}

// errNoAccounts is the reason of a registration refused because neither
// local accounts nor a registrar are configured.
var errNoAccounts = errors.New("registration is not enabled on this server")
