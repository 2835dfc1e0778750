package secret

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name, path, want, err string
	}{
		{"plain", write("a", "s3cret-pin"), "s3cret-pin", ""},
		{"newline", write("b", "s3cret-pin\n"), "s3cret-pin", ""},
		{"crlf", write("c", "s3cret-pin\r\n"), "s3cret-pin", ""},
		{"empty", write("d", ""), "", "empty"},
		{"only newline", write("e", "\n"), "", "empty"},
		{"too large", write("f", strings.Repeat("x", MaxSize+1)), "", "larger"},
		{"missing", filepath.Join(dir, "nope"), "", "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadFile(tt.path)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("ReadFile = %q, %v; want error with %q", got, err, tt.err)
				}
				if strings.Contains(err.Error(), "xxxx") {
					t.Fatal("error holds the file content")
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadFile = %q, %v", got, err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Setenv("ESCROWD_TEST_SECRET", "from-env")
	if s, err := Load("pin", "", "ESCROWD_TEST_SECRET"); err != nil || s != "from-env" {
		t.Fatalf("Load from env = %q, %v", s, err)
	}
	p := filepath.Join(t.TempDir(), "pin")
	os.WriteFile(p, []byte("from-file\n"), 0o600)
	if s, err := Load("pin", p, "ESCROWD_TEST_SECRET"); err != nil || s != "from-file" {
		t.Fatalf("Load from file = %q, %v (the file wins)", s, err)
	}
	if _, err := Load("pin", "", "ESCROWD_TEST_UNSET"); !errors.Is(err, ErrMissing) {
		t.Fatalf("Load with nothing = %v, want ErrMissing", err)
	}
}
