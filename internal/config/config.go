// Package config decodes escrowd's configuration file: a YAML mapping of
// setting names to scalar values, with ${NAME} references to the
// environment. It knows nothing of what the settings mean: the caller
// says which names exist and applies the values (cmd/escrowd sets them
// as its flags, so a file and the command line parse a value the same
// way).
//
// The file comes from outside the program, so the decoder trusts nothing:
// one document, one mapping, known keys once each, scalar values, a size
// bound. Errors name the file, the line and the key; they never quote a
// value, because a value may hold what an environment variable expanded
// to.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSize bounds a configuration file.
const MaxSize = 1 << 20

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid configuration")

// Error is a problem at a place in the file.
type Error struct {
	File   string
	Line   int    // 0 if the problem has no line
	Key    string // "" if the problem is not about one key
	Reason string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	b.WriteString(": " + e.Reason)
	return b.String()
}

func (e *Error) Unwrap() error { return ErrInvalid }

// Setting is one key of the file with its value, references expanded.
type Setting struct {
	Key   string
	Value string
	Line  int
	// FromEnv: the value holds an expanded ${NAME} reference. Callers
	// must not print it (it may be a path made of a secret by mistake).
	FromEnv bool
}

// Parse decodes a file named name. known reports whether a key is a
// setting; lookup resolves ${NAME} references (os.LookupEnv; nil: no
// variable is set). Settings come back in file order.
func Parse(name string, data []byte, known func(key string) bool, lookup func(name string) (string, bool)) ([]Setting, error) {
	fail := func(line int, key, format string, args ...any) error {
		return &Error{File: name, Line: line, Key: key, Reason: fmt.Sprintf(format, args...)}
	}
	if len(data) > MaxSize {
		return nil, fail(0, "", "larger than %d bytes", MaxSize)
	}
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file sets nothing
		}
		return nil, fail(0, "", "not YAML: %s", yamlReason(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fail(extra.Line, "", "holds more than one YAML document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, fail(doc.Line, "", "not a YAML mapping")
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return nil, nil // only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, "", "must be a mapping of setting names to values")
	}
	var out []Setting
	seen := make(map[string]int)
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Tag != "!!str" {
			return nil, fail(k.Line, "", "a key must be a setting name")
		}
		key := k.Value
		if !known(key) {
			return nil, fail(k.Line, key, "unknown setting (escrowd -h lists them; a key is a flag name without its dash)")
		}
		if prev, ok := seen[key]; ok {
			return nil, fail(k.Line, key, "set twice (first on line %d)", prev)
		}
		seen[key] = k.Line
		if v.Kind != yaml.ScalarNode {
			return nil, fail(v.Line, key, "must be a single value, not a list or a mapping")
		}
		if v.Tag == "!!null" {
			return nil, fail(v.Line, key, "has no value")
		}
		val, fromEnv, err := Expand(v.Value, lookup)
		if err != nil {
			return nil, fail(v.Line, key, "%v", err)
		}
		out = append(out, Setting{Key: key, Value: val, Line: v.Line, FromEnv: fromEnv})
	}
	return out, nil
}

// yamlReason keeps the YAML library's message but not the text it quotes.
func yamlReason(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: ")
	if i := strings.IndexAny(s, "`'\""); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return s
}

// Expand replaces every ${NAME} in s with the variable's value. NAME is a
// letter or underscore then letters, digits and underscores. A "$" not
// followed by "{" stays as it is; a "${" that does not form a reference is
// an error, and so is a variable that is not set (the error names it and
// quotes nothing else). fromEnv reports whether any reference was found.
func Expand(s string, lookup func(string) (string, bool)) (out string, fromEnv bool, err error) {
	if !strings.Contains(s, "${") {
		return s, false, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), fromEnv, nil
		}
		b.WriteString(s[:i])
		rest := s[i+2:]
		j := strings.IndexByte(rest, '}')
		if j < 0 || !validName(rest[:j]) {
			return "", false, errors.New("malformed ${NAME} reference (a name is letters, digits and underscores, not starting with a digit)")
		}
		name := rest[:j]
		v, ok := lookup(name)
		if !ok {
			return "", false, fmt.Errorf("environment variable %s is not set", name)
		}
		b.WriteString(v)
		fromEnv = true
		s = rest[j+1:]
	}
}

func validName(n string) bool {
	if n == "" {
		return false
	}
	for i, c := range n {
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
