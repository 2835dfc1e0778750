package hsm

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Defaults for Config fields left zero.
const (
	DefaultSessions    = 4
	DefaultWaitTimeout = 5 * time.Second
	DefaultKEKLabel    = "escrowd-kek"
	// DefaultHotKeyTTL is how long a hot escrow key lives when HotKeys is
	// set and HotKeyTTL is not.
	DefaultHotKeyTTL = 10 * time.Second
)

// Config says which module, token and KEK to use.
//
// Config never prints its PIN: String, Format (every fmt verb, including
// %+v and %#v), GoString and LogValue redact it, and encoding/json skips it.
type Config struct {
	Module      string        // path of the PKCS#11 module
	TokenLabel  string        // label of the token (CKA_LABEL of the token info)
	PIN         string        `json:"-"` // user PIN; callers read it from a file or the environment
	Sessions    int           // session pool size, default 4
	WaitTimeout time.Duration // max wait for a pooled session, default 5s, then ErrUnavailable
	KEKLabel    string        // default "escrowd-kek"; version N object label is KEKLabel+"-vN"
	// AllowPublicKEK accepts master KEKs that are public objects
	// (CKA_PRIVATE=false), as `escrowctl hsm init` made them before KEKs
	// were private. SoftHSM writes a public object's value in clear into
	// the token directory: development, and migrating such a token
	// (docs/LIFECYCLE.md), only. Open refuses them otherwise (ErrKEKPublic).
	AllowPublicKEK bool
	// HotKeys is how many unwrapped escrow keys each pooled session keeps
	// as session objects in the token (least recently used out first),
	// so that re-wraps of one group in a row unwrap its key once; 0 keeps
	// none. HotKeyTTL bounds how long one is kept after it was unwrapped
	// (default DefaultHotKeyTTL). See docs/HSM.md, "Hot escrow keys".
	HotKeys   int
	HotKeyTTL time.Duration
	// HotSlots is how many opened escrow slots each pooled session keeps:
	// the GDK a verified slot holds, and its binding key, as session
	// objects in the token, keyed by a digest of the slot's exact bytes
	// and its escrow key, so that re-wrapping the same slot again skips
	// its opening and its checks; 0 keeps none. Each lives at most
	// HotKeyTTL after the slot was opened. See docs/HSM.md, "Hot slots".
	HotSlots int
	// Observer, if set, learns operation and session-wait times (metrics).
	Observer Observer `json:"-"`
}

func (c Config) withDefaults() Config {
	if c.Sessions <= 0 {
		c.Sessions = DefaultSessions
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	if c.KEKLabel == "" {
		c.KEKLabel = DefaultKEKLabel
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	if c.HotKeys < 0 {
		c.HotKeys = 0
	}
	if c.HotSlots < 0 {
		c.HotSlots = 0
	}
	if c.HotKeyTTL <= 0 {
		c.HotKeyTTL = DefaultHotKeyTTL
	}
	return c
}

// kekObjectLabel is the CKA_LABEL of master KEK version v.
func kekObjectLabel(base string, v uint32) string {
	return base + "-v" + strconv.FormatUint(uint64(v), 10)
}

// kekLabelVersion parses a KEK object label made by kekObjectLabel.
func kekLabelVersion(base, label string) (uint32, bool) {
	rest, ok := strings.CutPrefix(label, base+"-v")
	if !ok || rest == "" || rest[0] == '0' {
		return 0, false
	}
	v, err := strconv.ParseUint(rest, 10, 32)
	if err != nil || v == 0 {
		return 0, false
	}
	return uint32(v), true
}

func redacted(pin string) string {
	if pin == "" {
		return `""`
	}
	return "[REDACTED]"
}

// String describes c without the PIN.
func (c Config) String() string {
	return fmt.Sprintf("hsm.Config{Module:%q TokenLabel:%q PIN:%s Sessions:%d WaitTimeout:%s KEKLabel:%q AllowPublicKEK:%v HotKeys:%d HotSlots:%d HotKeyTTL:%s}",
		c.Module, c.TokenLabel, redacted(c.PIN), c.Sessions, c.WaitTimeout, c.KEKLabel, c.AllowPublicKEK, c.HotKeys, c.HotSlots, c.HotKeyTTL)
}

// GoString is String: %#v must not print the PIN either.
func (c Config) GoString() string { return c.String() }

// Format prints String for every verb, so that %v, %+v, %#v, %s and %q of a
// Config (or of a struct holding one) never print the PIN.
func (c Config) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", c.String())
		return
	}
	_, _ = f.Write([]byte(c.String()))
}

// LogValue keeps the PIN out of log/slog output.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("module", c.Module),
		slog.String("token_label", c.TokenLabel),
		slog.String("pin", redacted(c.PIN)),
		slog.Int("sessions", c.Sessions),
		slog.Duration("wait_timeout", c.WaitTimeout),
		slog.String("kek_label", c.KEKLabel),
		slog.Bool("allow_public_kek", c.AllowPublicKEK),
		slog.Int("hot_keys", c.HotKeys),
		slog.Int("hot_slots", c.HotSlots),
		slog.Duration("hot_key_ttl", c.HotKeyTTL),
	)
}
