package accesslog

import (
	"fmt"
	"os"
	"strconv"
	"sync"
)

// RotatingFile is a file sink rotated by size: a write that would take the
// file past MaxBytes first renames it to PATH.1 (PATH.1 to PATH.2, …, the
// oldest beyond MaxFiles removed) and starts a new PATH. The Logger writes
// whole lines only, so no line is split across two files.
type RotatingFile struct {
	path     string
	maxBytes int64
	maxFiles int

	mu     sync.Mutex
	f      *os.File
	size   int64
	closed bool
}

// Default rotation bounds.
const (
	DefaultMaxBytes = 100 << 20
	DefaultMaxFiles = 3
)

// OpenFile opens (appending to) or creates path, mode 0600: lines name
// identities and paths an operator may not want world-readable.
// maxBytes <= 0 and maxFiles <= 0 take the defaults.
func OpenFile(path string, maxBytes int64, maxFiles int) (*RotatingFile, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	if maxFiles <= 0 {
		maxFiles = DefaultMaxFiles
	}
	r := &RotatingFile{path: path, maxBytes: maxBytes, maxFiles: maxFiles}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *RotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("accesslog: open %s: %w", r.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("accesslog: stat %s: %w", r.path, err)
	}
	r.f, r.size = f, st.Size()
	return nil
}

// Write appends p, rotating first if p would take the file past the bound.
func (r *RotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, ErrClosed
	}
	if r.size > 0 && r.size+int64(len(p)) > r.maxBytes {
		if err := r.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("accesslog: write %s: %w", r.path, err)
	}
	return n, nil
}

// rotate shifts PATH.i to PATH.i+1, PATH to PATH.1, and opens a new PATH.
func (r *RotatingFile) rotate() error {
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("accesslog: close %s: %w", r.path, err)
	}
	// Renaming onto PATH.N replaces it: the oldest file goes first.
	for i := r.maxFiles - 1; i >= 1; i-- {
		if err := os.Rename(r.backup(i), r.backup(i+1)); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("accesslog: rotate: %w", err)
		}
	}
	if err := os.Rename(r.path, r.backup(1)); err != nil {
		return fmt.Errorf("accesslog: rotate: %w", err)
	}
	return r.open()
}

func (r *RotatingFile) backup(i int) string { return r.path + "." + strconv.Itoa(i) }

// Close closes the file.
func (r *RotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if err := r.f.Close(); err != nil {
		return fmt.Errorf("accesslog: close %s: %w", r.path, err)
	}
	return nil
}

// Stdout is the stdout sink; closing it leaves stdout open.
type Stdout struct{}

// Write writes p to stdout.
func (Stdout) Write(p []byte) (int, error) { return os.Stdout.Write(p) }

// Close does nothing: stdout belongs to the process.
func (Stdout) Close() error { return nil }
