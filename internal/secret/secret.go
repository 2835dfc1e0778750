// Package secret reads PINs and tokens from files or the environment,
// never from flags, which other users of the machine can read in ps.
package secret

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ErrMissing: neither the file nor the environment variable gave a value.
var ErrMissing = errors.New("secret not configured")

// MaxSize bounds a secret file: a PIN or a token, not a document.
const MaxSize = 4096

// ReadFile returns the file's content without its trailing newline. An
// unreadable, empty or oversized file is an error that names the file but
// never its content.
func ReadFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("failed to read secret file: %w", err)
	}
	defer f.Close()
	buf := make([]byte, MaxSize+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return "", fmt.Errorf("failed to read secret file %s: %w", path, err)
	}
	if n > MaxSize {
		return "", fmt.Errorf("secret file %s is larger than %d bytes", path, MaxSize)
	}
	s := strings.TrimRight(string(buf[:n]), "\r\n")
	clear(buf)
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

// Load reads the secret from file if path is set, else from the
// environment variable env. what names the secret in errors.
func Load(what, path, env string) (string, error) {
	if path != "" {
		s, err := ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("%s: %w", what, err)
		}
		return s, nil
	}
	if s := os.Getenv(env); s != "" {
		return s, nil
	}
	return "", fmt.Errorf("%s: %w: give a file or set $%s", what, ErrMissing, env)
}
