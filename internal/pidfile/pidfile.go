// Package pidfile writes a daemon's process id to a file that is locked
// (flock) for as long as the daemon runs, so the file names one running
// process or none:
//
//   - a second daemon given the same file finds it locked and refuses to
//     start (ErrHeld, naming the holder's process id);
//   - a file left by a daemon that died without cleaning up holds no lock
//     (the kernel drops it with the process), so the next daemon takes it
//     over and writes its own id;
//   - a clean exit removes the file.
//
// The file is opened without following a symbolic link and must be a
// regular file. Linux and the BSDs only (flock).
package pidfile

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ErrHeld: another running process holds the file.
var ErrHeld = errors.New("pid file is held by a running process")

// File is a held pid file.
type File struct {
	path string
	f    *os.File
	once sync.Once
	err  error
}

// Acquire creates or takes over the pid file at path, locks it and writes
// this process's id to it.
func Acquire(path string) (*File, error) {
	for range 3 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o644)
		if err != nil {
			if errors.Is(err, syscall.ELOOP) {
				return nil, fmt.Errorf("pid file %s is a symbolic link: refused", path)
			}
			return nil, fmt.Errorf("pid file: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("pid file: %w", err)
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("pid file %s is not a regular file: refused", path)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			b, _ := io.ReadAll(io.LimitReader(f, 32))
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("pid file %s: %w (process %s): is another escrowd running?", path, ErrHeld, holder(b))
			}
			return nil, fmt.Errorf("pid file %s: lock: %w", path, err)
		}
		// Between the open and the lock, the holder may have exited and
		// removed the file (or someone replaced it): then this lock is on
		// a file nobody will find. Open the path again.
		if now, err := os.Lstat(path); err != nil || !os.SameFile(fi, now) {
			f.Close()
			continue
		}
		// Locked: whatever the file held is from a process that is gone.
		if err := write(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("pid file %s: %w", path, err)
		}
		return &File{path: path, f: f}, nil
	}
	return nil, fmt.Errorf("pid file %s: replaced while being locked, three times over", path)
}

func write(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		return err
	}
	return f.Sync()
}

// holder is the process id a held file names, for the error.
func holder(b []byte) string {
	s := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(s); err != nil {
		return "unknown"
	}
	return s
}

// Path is the file's path.
func (p *File) Path() string { return p.path }

// Release removes the file, if the path still names it, and drops the
// lock. It is idempotent.
func (p *File) Release() error {
	p.once.Do(func() {
		fi, err := p.f.Stat()
		if now, lerr := os.Lstat(p.path); err == nil && lerr == nil && os.SameFile(fi, now) {
			p.err = os.Remove(p.path)
		}
		if err := p.f.Close(); p.err == nil {
			p.err = err
		}
	})
	return p.err
}
