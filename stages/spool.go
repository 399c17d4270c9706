package stages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// spooled is one NATS message waiting for NATS.
type spooled struct {
	subject string
	data    []byte
	bite    bool // the bite message (not the Store copy): counts as a published bite
}

func (e spooled) size() int { return len(e.subject) + len(e.data) }

// errSpoolFull is push's error when e would pass the spool's size bound.
var errSpoolFull = errors.New("spool is full")

// spool is a bounded FIFO of messages held while NATS is unreachable.
type spool interface {
	// push appends e. It fails with errSpoolFull past the size bound, or
	// with the OS error where the spool cannot store e (a full disk); e is
	// then not held and nothing of it is left behind.
	push(e spooled) error
	// peek returns the oldest message.
	peek() (spooled, bool)
	// pop removes the oldest message.
	pop() error
	// len returns the number of messages held.
	len() int
}

// memSpool holds messages in memory, up to max bytes.
type memSpool struct {
	q     []spooled
	head  int
	bytes int
	max   int
}

func (s *memSpool) push(e spooled) error {
	if s.bytes+e.size() > s.max {
		return errSpoolFull
	}
	s.q = append(s.q, e)
	s.bytes += e.size()
	return nil
}

func (s *memSpool) peek() (spooled, bool) {
	if s.head == len(s.q) {
		return spooled{}, false
	}
	return s.q[s.head], true
}

func (s *memSpool) pop() error {
	s.bytes -= s.q[s.head].size()
	s.q[s.head] = spooled{}
	s.head++
	if s.head == len(s.q) {
		s.q, s.head = s.q[:0], 0
	} else if s.head > 1024 && s.head > len(s.q)/2 {
		s.q = append(s.q[:0], s.q[s.head:]...)
		s.head = 0
	}
	return nil
}

func (s *memSpool) len() int { return len(s.q) - s.head }

// dirSpool holds messages as files in a directory, up to max bytes, so that
// they survive a restart: a new sink on the same directory sends them first.
// File names are a zero-padded sequence number and a kind; the content is
// the subject's length (2 bytes), the subject and the data.
type dirSpool struct {
	dir   string
	max   int
	bytes int
	files []string // oldest first
	sizes []int
	next  uint64
}

func openDirSpool(dir string, max int) (*dirSpool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool dir: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool dir: %w", err)
	}
	s := &dirSpool{dir: dir, max: max}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			// Half a message from a run that crashed while writing it.
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, kind, ok := strings.Cut(name, ".")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil || (kind != "bite" && kind != "store") {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		s.files = append(s.files, name)
		s.sizes = append(s.sizes, int(info.Size()))
		s.bytes += int(info.Size())
		if n >= s.next {
			s.next = n + 1
		}
	}
	sort.Sort(byName{s})
	return s, nil
}

type byName struct{ s *dirSpool }

func (b byName) Len() int           { return len(b.s.files) }
func (b byName) Less(i, j int) bool { return b.s.files[i] < b.s.files[j] }
func (b byName) Swap(i, j int) {
	b.s.files[i], b.s.files[j] = b.s.files[j], b.s.files[i]
	b.s.sizes[i], b.s.sizes[j] = b.s.sizes[j], b.s.sizes[i]
}

func (s *dirSpool) push(e spooled) error {
	size := 2 + e.size()
	if s.bytes+size > s.max || len(e.subject) > 0xffff {
		return errSpoolFull
	}
	kind := "store"
	if e.bite {
		kind = "bite"
	}
	name := fmt.Sprintf("%020d.%s", s.next, kind)
	buf := make([]byte, 0, size)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(e.subject)))
	buf = append(buf, e.subject...)
	buf = append(buf, e.data...)
	// Write then rename, so that a crash never leaves half a message.
	tmp := filepath.Join(s.dir, name+".tmp")
	if err := writeSynced(tmp, buf); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, filepath.Join(s.dir, name)); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	s.next++
	s.files = append(s.files, name)
	s.sizes = append(s.sizes, size)
	s.bytes += size
	return nil
}

// writeSynced writes b to a new file name and syncs it. Every error (a
// write, the sync or the close: ENOSPC, EDQUOT, EIO) is returned; the
// caller removes the file.
func writeSynced(name string, b []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (s *dirSpool) peek() (spooled, bool) {
	for len(s.files) > 0 {
		b, err := os.ReadFile(filepath.Join(s.dir, s.files[0]))
		if err == nil && len(b) >= 2 {
			n := int(binary.BigEndian.Uint16(b))
			if len(b) >= 2+n {
				return spooled{subject: string(b[2 : 2+n]), data: b[2+n:], bite: strings.HasSuffix(s.files[0], ".bite")}, true
			}
		}
		// Unreadable: drop it rather than block the spool for ever.
		_ = s.pop()
	}
	return spooled{}, false
}

func (s *dirSpool) pop() error {
	if len(s.files) == 0 {
		return errors.New("spool empty")
	}
	err := os.Remove(filepath.Join(s.dir, s.files[0]))
	s.bytes -= s.sizes[0]
	s.files, s.sizes = s.files[1:], s.sizes[1:]
	return err
}

func (s *dirSpool) len() int { return len(s.files) }
