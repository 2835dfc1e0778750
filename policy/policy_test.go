package policy

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/escrowd/escrowd/store"
)

var ops = []string{"ProvisionGroup", "GetEscrowKey", "Rewrap", "IssueUnlockCodes",
	"RevealUnlockCode", "ListUnlockCodes", "ApproveReveal", "ListPendingReveals", "GetGroup", "ListHSMObjects", "BatchRewrap"}

func good(t testing.TB) *Policy {
	t.Helper()
	b, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("good.yaml", b, ops)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const (
	syncID  = "spiffe://escrowd.dev/sync-backend"
	alice   = "spiffe://escrowd.dev/support/alice"
	carolID = "spki:sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
)

func TestDecide(t *testing.T) {
	p := good(t)
	tests := []struct {
		name   string
		req    Request
		allow  bool
		reason string
		limits int
		dual   bool
		rule   string
	}{
		{"sync provisions", Request{Identity: syncID, Operation: "ProvisionGroup", Group: "g"}, true, "", 0, false, ""},
		{"sync rewraps to a member", Request{Identity: syncID, Operation: "Rewrap", Targets: []string{"member"}}, true, "", 0, false, ""},
		{"sync rewraps to escrow: not its target", Request{Identity: syncID, Operation: "Rewrap", Targets: []string{"escrow"}}, false, "target kinds escrow", 0, false, RuleRole},
		{"sync may not reveal", Request{Identity: syncID, Operation: "RevealUnlockCode", Ticket: "SUP-1"}, false, "may not call RevealUnlockCode", 0, false, RuleRole},
		{"support reveals", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u", Ticket: "SUP-12"}, true, "", 3, false, ""},
		{"support reveals in a flagged group", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "vip-ceo", User: "u", Ticket: "INC-7"}, true, "", 3, true, ""},
		{"reveal without a ticket", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u"}, false, "ticket reference", 0, false, RuleTicket},
		{"reveal with a bad ticket", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u", Ticket: "SUP-1; DROP"}, false, "ticket reference", 0, false, RuleTicket},
		{"support may not provision", Request{Identity: alice, Operation: "ProvisionGroup"}, false, "alice may not call ProvisionGroup", 0, false, RuleRole},
		{"spki identity with two roles", Request{Identity: carolID, Operation: "ListHSMObjects"}, true, "", 0, false, ""},
		{"spki identity's second role", Request{Identity: carolID, Operation: "ListUnlockCodes"}, true, "", 0, false, ""},
		{"unknown identity", Request{Identity: "spiffe://escrowd.dev/mallory", Operation: "GetGroup"}, false, "not in the policy", 0, false, RuleIdentity},
		{"no certificate", Request{Operation: "GetGroup"}, false, "no valid client certificate", 0, false, RuleIdentity},
		{"operation nobody has", Request{Identity: carolID, Operation: "DeleteEverything"}, false, "may not call", 0, false, RuleRole},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.req)
			if d.Allow != tt.allow {
				t.Fatalf("allow = %v (%s), want %v", d.Allow, d.Reason, tt.allow)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Fatalf("reason %q, want it to say %q", d.Reason, tt.reason)
			}
			if d.Rule != tt.rule {
				t.Fatalf("rule %q, want %q", d.Rule, tt.rule)
			}
			if len(d.Limits) != tt.limits || d.DualControl != tt.dual {
				t.Fatalf("limits %v dual %v", d.Limits, d.DualControl)
			}
			if tt.dual && d.ApprovalTimeout != 5*time.Minute {
				t.Fatalf("approval timeout %v", d.ApprovalTimeout)
			}
		})
	}
}

func TestLimitKeys(t *testing.T) {
	p := good(t)
	d := p.Decide(Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u", Ticket: "SUP-1"})
	want := []Limit{
		{Name: "reveals-per-user", Key: "reveals-per-user|user|g/u", Max: 3, Window: 24 * time.Hour},
		{Name: "reveals-per-technician", Key: "reveals-per-technician|caller|" + alice, Max: 20, Window: time.Hour},
		{Name: "reveals-overall", Key: "reveals-overall|global|*", Max: 1000, Window: time.Hour},
	}
	for i, w := range want {
		if d.Limits[i] != w {
			t.Errorf("limit %d = %+v, want %+v", i, d.Limits[i], w)
		}
	}
}

// TestLimitKeysFromValidIDsOnly: a rate-limit key is built only from ids
// that are ids; a request whose group or user id is not one gets no key
// and is refused as malformed (RuleInvalid), after the policy's own
// refusals, and only where a limit would count it.
func TestLimitKeysFromValidIDsOnly(t *testing.T) {
	p := good(t)
	huge := strings.Repeat("g", 1<<20)
	tests := []struct {
		name  string
		req   Request
		allow bool
		rule  string
	}{
		{"a group id of 1 MiB", Request{Identity: alice, Operation: "RevealUnlockCode", Group: huge, User: "u", Ticket: "SUP-1"}, false, RuleInvalid},
		{"a user id of 1 MiB", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: huge, Ticket: "SUP-1"}, false, RuleInvalid},
		{"a group id of 129 bytes", Request{Identity: alice, Operation: "RevealUnlockCode", Group: strings.Repeat("g", 129), User: "u", Ticket: "SUP-1"}, false, RuleInvalid},
		{"a user id with a space", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u v", Ticket: "SUP-1"}, false, RuleInvalid},
		{"a group id with a NUL", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g\x00", User: "u", Ticket: "SUP-1"}, false, RuleInvalid},
		{"ids of 128 bytes", Request{Identity: alice, Operation: "RevealUnlockCode", Group: strings.Repeat("g", 128), User: strings.Repeat("u", 128), Ticket: "SUP-1"}, true, ""},
		{"an empty user: the handler's business", Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", Ticket: "SUP-1"}, true, ""},
		{"no limit, no key: the handler's business", Request{Identity: alice, Operation: "ListUnlockCodes", Group: huge, User: "u"}, true, ""},
		{"a stranger is refused as one", Request{Identity: "spiffe://escrowd.dev/mallory", Operation: "RevealUnlockCode", Group: huge}, false, RuleIdentity},
		{"a missing ticket is refused as one", Request{Identity: alice, Operation: "RevealUnlockCode", Group: huge}, false, RuleTicket},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.req)
			if d.Allow != tt.allow || d.Rule != tt.rule {
				t.Fatalf("allow %v rule %q (%.80s), want %v %q", d.Allow, d.Rule, d.Reason, tt.allow, tt.rule)
			}
			if tt.rule == RuleInvalid && (len(d.Limits) != 0 || len(d.Reason) > 100 || strings.Contains(d.Reason, "ggg")) {
				t.Fatalf("limits %d, reason %.120q: want no key, and a reason that does not echo the id", len(d.Limits), d.Reason)
			}
			for _, l := range d.Limits {
				if len(l.Key) > MaxLimitKey {
					t.Fatalf("key of %d bytes, more than %d", len(l.Key), MaxLimitKey)
				}
			}
		})
	}
}

// TestLimitKeysBounded: the longest key the policy can build, from the
// longest name, identity and ids, is within MaxLimitKey, which is within
// what every store takes (store.MaxRateKey).
func TestLimitKeysBounded(t *testing.T) {
	if MaxLimitKey > store.MaxRateKey {
		t.Fatalf("policy.MaxLimitKey %d > store.MaxRateKey %d", MaxLimitKey, store.MaxRateKey)
	}
	if MaxLimit > store.MaxRateMax || MaxWindow > store.MaxRateWindow {
		t.Fatal("the policy's limit or window bound is above the store's")
	}
	name := strings.Repeat("n", MaxLimitName)
	id := "spiffe://escrowd.dev/" + strings.Repeat("a", MaxIdentity-len("spiffe://escrowd.dev/"))
	slashes := strings.Repeat("/", MaxIDLength)
	p, err := Parse("long.yaml", []byte(fmt.Sprintf(`
version: 1
roles: {support: {operations: [RevealUnlockCode]}}
identities: [{id: %q, roles: [support]}]
rate_limits:
  - {name: %s-u, operations: [RevealUnlockCode], per: user, limit: %d, window: %s}
  - {name: %s-c, operations: [RevealUnlockCode], per: caller, limit: 1, window: 1s}
`, id, name[2:], MaxLimit, MaxWindow, name[2:])), ops)
	if err != nil {
		t.Fatal(err)
	}
	d := p.Decide(Request{Identity: id, Operation: "RevealUnlockCode", Group: slashes, User: slashes})
	if !d.Allow || len(d.Limits) != 2 {
		t.Fatalf("%+v", d)
	}
	for _, l := range d.Limits {
		if len(l.Key) > MaxLimitKey {
			t.Fatalf("%s: key of %d bytes, more than %d", l.Name, len(l.Key), MaxLimitKey)
		}
		if err := store.CheckRateLimits([]store.RateLimit{{Key: l.Key, Max: l.Max, Window: l.Window}}); err != nil {
			t.Fatalf("%s: the store refuses it: %v", l.Name, err)
		}
	}
}

// TestLimitKeysUnambiguous: per-user keys of different (group, user)
// pairs differ even when ids hold '/' or '%'; a pair without either keeps
// the key it had before escaping existed.
func TestLimitKeysUnambiguous(t *testing.T) {
	p := good(t)
	key := func(group, user string) string {
		d := p.Decide(Request{Identity: alice, Operation: "RevealUnlockCode", Group: group, User: user, Ticket: "SUP-1"})
		if !d.Allow {
			t.Fatalf("%s/%s: %s", group, user, d.Reason)
		}
		return d.Limits[0].Key
	}
	if got := key("g", "u"); got != "reveals-per-user|user|g/u" {
		t.Fatalf("key %q: changed for ids without / or %%", got)
	}
	seen := map[string][2]string{}
	for _, pair := range [][2]string{{"a/b", "c"}, {"a", "b/c"}, {"a%2Fb", "c"}, {"a", "b%2Fc"}, {"a%", "2Fb/c"}, {"a/b/c", "d"}, {"a", "b/c/d"}} {
		k := key(pair[0], pair[1])
		if prev, dup := seen[k]; dup {
			t.Fatalf("group %q user %q and group %q user %q share key %q", prev[0], prev[1], pair[0], pair[1], k)
		}
		seen[k] = pair
	}
}

func TestParseErrors(t *testing.T) {
	base, _ := os.ReadFile("testdata/good.yaml")
	replace := func(old, new string) string {
		if !strings.Contains(string(base), old) {
			t.Fatalf("good.yaml lacks %q", old)
		}
		return strings.Replace(string(base), old, new, 1)
	}
	tests := []struct {
		name, file string
		line       int
		reason     string
	}{
		{"empty", "", 0, "empty policy"},
		{"syntax error", replace("roles:\n  sync-backend:", "roles:\n  sync-backend: [\n"), 4, "expected ',' or ']'"},
		{"bad indentation", replace("    name: alice", "   name: alice"), 13, "expected '-'"},
		{"unknown field", replace("    name: bob", "    nmae: bob"), 20, "nmae"},
		// A misspelt key inside a section must not drop its constraint.
		{"unknown field in role", replace("    rewrap_targets: [member, device]", "    rewrap_target: [member, device]"), 6, "field rewrap_target not found"},
		{"unknown field in tickets", replace("  required_for: [RevealUnlockCode]", "  requird_for: [RevealUnlockCode]"), 27, "field requird_for not found"},
		{"unknown field in dual control", replace("  timeout: 5m", "  timeuot: 5m"), 33, "field timeuot not found"},
		{"unknown field in a rate limit", replace("  - name: reveals-per-user", "  - nam: reveals-per-user"), 36, "field nam not found"},
		{"wrong version", replace("version: 1", "version: 2"), 1, "version must be 1"},
		{"unknown role", replace("    roles: [support]\n  - id: spiffe://escrowd.dev/support/bob", "    roles: [suport]\n  - id: spiffe://escrowd.dev/support/bob"), 18, `unknown role "suport"`},
		{"unknown operation", replace("[GetGroup, ListHSMObjects]", "[GetGroup, ListHSMObject]"), 10, `unknown operation "ListHSMObject"`},
		{"bad identity", replace("spiffe://escrowd.dev/sync-backend", "sync-backend"), 13, "neither spiffe"},
		{"duplicate identity", replace("spiffe://escrowd.dev/support/bob", "spiffe://escrowd.dev/support/alice"), 19, "listed twice"},
		{"bad target", replace("[member, device]", "[member, laptop]"), 6, `unknown rewrap target "laptop"`},
		{"bad ticket pattern", replace(`'^(SUP|INC)-[0-9]{1,8}$'`, `'^(SUP'`), 28, "pattern"},
		{"ticket pattern matches empty", replace(`'^(SUP|INC)-[0-9]{1,8}$'`, `'.*'`), 28, "matches an empty ticket"},
		{"bad timeout", replace("timeout: 5m", "timeout: forever"), 33, "timeout"},
		{"bad scope", replace("per: caller", "per: planet"), 43, `per "planet"`},
		{"zero limit", replace("limit: 3", "limit: 0"), 39, "at least 1"},
		{"bad window", replace("window: 24h", "window: daily"), 40, "window"},
		{"duplicate limit", replace("name: reveals-overall", "name: reveals-per-user"), 46, "listed twice"},
		// What goes into a rate-limit key is bounded.
		{"long identity", replace("spiffe://escrowd.dev/sync-backend", "spiffe://escrowd.dev/"+strings.Repeat("s", MaxIdentity)), 13, "at most 2048"},
		{"long limit name", replace("name: reveals-per-user", "name: "+strings.Repeat("r", MaxLimitName+1)), 36, "1 to 64 bytes"},
		{"limit name not ASCII", replace("name: reveals-per-user", "name: révélations"), 36, "printable ASCII"},
		{"huge limit", replace("limit: 3", "limit: 1000000001"), 39, "at most 1000000000"},
		{"huge window", replace("window: 24h", "window: 8785h"), 40, "from 1s to 8784h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.file), ops)
			var pe *Error
			if !errors.As(err, &pe) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse error = %v, want *Error", err)
			}
			if pe.File != "p.yaml" || pe.Line != tt.line || !strings.Contains(pe.Reason, tt.reason) {
				t.Fatalf("error %q (line %d), want line %d saying %q", err, pe.Line, tt.line, tt.reason)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	b, _ := os.ReadFile("testdata/good.yaml")
	f.Add(b)
	f.Add([]byte("version: 1\n"))
	f.Add([]byte("version: 1\nroles: {a: {operations: [GetGroup]}}\nidentities: [{id: 'spiffe://x/y', roles: [a]}]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse("fuzz.yaml", b, ops)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error is not *Error: %v", err)
			}
			return
		}
		// A parsed policy answers without panicking and denies strangers.
		if d := p.Decide(Request{Identity: "spiffe://nobody.invalid/x", Operation: "GetGroup"}); d.Allow {
			t.Fatal("an identity absent from the policy was allowed")
		}
	})
}

func ExampleParse() {
	p, err := Parse("policy.yaml", []byte(`
version: 1
roles:
  support: {operations: [RevealUnlockCode]}
identities:
  - {id: "spiffe://example.org/support/alice", name: alice, roles: [support]}
`), []string{"RevealUnlockCode", "ProvisionGroup"})
	if err != nil {
		panic(err)
	}
	d := p.Decide(Request{Identity: "spiffe://example.org/support/alice", Operation: "ProvisionGroup"})
	fmt.Println(d.Allow, d.Reason)
	// Output: false alice may not call ProvisionGroup
}

// policyWith parses good.yaml with one line replaced.
func policyWith(t *testing.T, old, new string) *Policy {
	t.Helper()
	b, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("good.yaml lacks %q", old)
	}
	p, err := Parse("p.yaml", []byte(strings.Replace(string(b), old, new, 1)), ops)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTicketPatternMatchesWholeTicket: a ticket must match the pattern as
// a whole, whether or not the file anchors it.
func TestTicketPatternMatchesWholeTicket(t *testing.T) {
	const filePattern = `'^(SUP|INC)-[0-9]{1,8}$'`
	tests := []struct {
		pattern, ticket string
		allow           bool
	}{
		{`'(SUP|INC)-[0-9]{1,8}'`, "SUP-12", true},
		{`'(SUP|INC)-[0-9]{1,8}'`, "INC-12345678", true},
		{`'(SUP|INC)-[0-9]{1,8}'`, "xSUP-12", false},
		{`'(SUP|INC)-[0-9]{1,8}'`, "SUP-12;DROP", false},
		{`'(SUP|INC)-[0-9]{1,8}'`, "SUP-123456789", false},
		{`'(SUP|INC)-[0-9]{1,8}'`, "see-INC-4-too", false},
		// An alternation at the top level is anchored as a whole, not
		// only its first and last branch.
		{`'SUP-[0-9]+|INC-[0-9]+'`, "SUP-1", true},
		{`'SUP-[0-9]+|INC-[0-9]+'`, "INC-1", true},
		{`'SUP-[0-9]+|INC-[0-9]+'`, "SUP-1x", false},
		{`'SUP-[0-9]+|INC-[0-9]+'`, "xINC-1", false},
		// Anchors the file wrote still work.
		{filePattern, "SUP-1", true},
		{filePattern, "SUP-1x", false},
		{`'^SUP-[0-9]+'`, "SUP-1x", false},
		{`'[0-9]+$'`, "x1", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.ticket, func(t *testing.T) {
			p := good(t)
			if tt.pattern != filePattern {
				p = policyWith(t, filePattern, tt.pattern)
			}
			d := p.Decide(Request{Identity: alice, Operation: "RevealUnlockCode", Group: "g", User: "u", Ticket: tt.ticket})
			if d.Allow != tt.allow {
				t.Fatalf("allow = %v (%s), want %v", d.Allow, d.Reason, tt.allow)
			}
			if !tt.allow && (d.Rule != RuleTicket || !strings.Contains(d.Reason, "as a whole")) {
				t.Fatalf("denial %s: %q", d.Rule, d.Reason)
			}
		})
	}
}

// TestDualControlGroupPatterns: '*' matches any run of bytes, '/'
// included, '?' one byte, anything else itself, case-sensitively (group
// ids are case-sensitive: "VIP-ceo" is not the group "vip-ceo"); the
// pattern matches the whole id.
func TestDualControlGroupPatterns(t *testing.T) {
	tests := []struct {
		pattern, group string
		match          bool
	}{
		{"vip-*", "vip-ceo", true},
		{"vip-*", "vip-", true},
		{"vip-*", "vip-eu/ceo", true}, // path.Match stopped '*' at '/'
		{"vip-*", "vip-a/b/c", true},
		{"vip-*", "VIP-ceo", false},
		{"vip-*", "xvip-ceo", false},
		{"vip-*", "vip", false},
		{"*", "a/b", true},
		{"*", "", true},
		{"*-board", "eu/acme-board", true},
		{"*-board", "acme-board-2", false},
		{"a*b*c", "a/x/b/y/c", true},
		{"a*b*c", "abcab", false},
		{"a*b*c", "aXbYcZc", true},
		{"board", "board", true},
		{"board", "board/x", false},
		{"board", "Board", false},
		{"g?", "g/", true},
		{"g?", "g", false},
		{"g?", "g12", false},
		{"**", "anything/at/all", true},
		{"*/*", "eu/ceo", true},
		{"*/*", "ceo", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+" "+tt.group, func(t *testing.T) {
			p := policyWith(t, `groups: ["vip-*"]`, fmt.Sprintf("groups: [%q]", tt.pattern))
			d := p.Decide(Request{Identity: alice, Operation: "RevealUnlockCode", Group: tt.group, User: "u", Ticket: "SUP-1"})
			if !d.Allow {
				t.Fatal(d.Reason)
			}
			if d.DualControl != tt.match {
				t.Fatalf("dual control = %v, want %v", d.DualControl, tt.match)
			}
		})
	}
}

func TestDualControlGroupPatternErrors(t *testing.T) {
	b, _ := os.ReadFile("testdata/good.yaml")
	for _, tt := range []struct{ pattern, reason string }{
		{"vip-[ab]*", "only * and ? are special"},
		{`vip-\*`, "only * and ? are special"},
		{"vip *", "printable ASCII"},
		{"", "empty"},
	} {
		t.Run(tt.pattern, func(t *testing.T) {
			f := strings.Replace(string(b), `groups: ["vip-*"]`, fmt.Sprintf("groups: [%q]", tt.pattern), 1)
			_, err := Parse("p.yaml", []byte(f), ops)
			var pe *Error
			if !errors.As(err, &pe) || pe.Line != 32 || !strings.Contains(pe.Reason, tt.reason) {
				t.Fatalf("Parse: %v, want line 32 saying %q", err, tt.reason)
			}
		})
	}
}

// FuzzGlobMatch checks globMatch against the same pattern as a regular
// expression, on printable ASCII.
func FuzzGlobMatch(f *testing.F) {
	f.Add("vip-*", "vip-eu/ceo")
	f.Add("a*b*c", "aXbYcZc")
	f.Add("g?*?", "g/x")
	f.Fuzz(func(t *testing.T, p, s string) {
		for _, c := range []byte(p + s) {
			if c < ' ' || c > '~' {
				return
			}
		}
		var re strings.Builder
		re.WriteString(`(?s)^`)
		for _, c := range []byte(p) {
			switch c {
			case '*':
				re.WriteString(`.*`)
			case '?':
				re.WriteString(`.`)
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString(`$`)
		if got, want := globMatch(p, s), regexp.MustCompile(re.String()).MatchString(s); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, want %v", p, s, got, want)
		}
	})
}

// TestDecideBatch: the call of a batch is decided on its own (identity,
// role, ticket) with no limits and no dual control; each item is then
// decided under its own group and target, with its own limits and dual
// control.
func TestDecideBatch(t *testing.T) {
	p, err := Parse("batch.yaml", []byte(`
version: 1
roles:
  sync: {operations: [BatchRewrap], rewrap_targets: [member, escrow]}
  nothing: {operations: [BatchRewrap], rewrap_targets: []}
  support: {operations: [RevealUnlockCode]}
identities:
  - {id: "spiffe://t/sync", roles: [sync]}
  - {id: "spiffe://t/nothing", roles: [nothing]}
  - {id: "spiffe://t/alice", roles: [support]}
dual_control: {operations: [BatchRewrap], groups: ["vip-*", "*"], timeout: 1m}
rate_limits:
  - {name: per-group, operations: [BatchRewrap], per: group, limit: 2, window: 1h}
  - {name: per-caller, operations: [BatchRewrap], per: caller, limit: 9, window: 1h}
`), ops)
	if err != nil {
		t.Fatal(err)
	}
	const sync = "spiffe://t/sync"
	tests := []struct {
		name   string
		req    Request
		allow  bool
		rule   string
		limits []string
		dual   bool
	}{
		{"the call: no limits, no dual control whatever the group pattern", Request{Identity: sync, Operation: "BatchRewrap", Batch: true}, true, "", nil, false},
		{"the call: its targets are left to the items", Request{Identity: sync, Operation: "BatchRewrap", Batch: true, Targets: []string{"device"}}, true, "", nil, false},
		{"the call: a role that grants no target", Request{Identity: "spiffe://t/nothing", Operation: "BatchRewrap", Batch: true}, false, RuleRole, nil, false},
		{"the call: a role without the operation", Request{Identity: "spiffe://t/alice", Operation: "BatchRewrap", Batch: true}, false, RuleRole, nil, false},
		{"an item: its group's limits and dual control", Request{Identity: sync, Operation: "BatchRewrap", Group: "vip-a", Targets: []string{"member"}}, true, "",
			[]string{"per-group|group|vip-a", "per-caller|caller|" + sync}, true},
		{"an item of another group", Request{Identity: sync, Operation: "BatchRewrap", Group: "b", Targets: []string{"escrow"}}, true, "",
			[]string{"per-group|group|b", "per-caller|caller|" + sync}, true},
		{"an item of a kind the role lacks", Request{Identity: sync, Operation: "BatchRewrap", Group: "b", Targets: []string{"device"}}, false, RuleRole, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(tt.req)
			if d.Allow != tt.allow || d.Rule != tt.rule {
				t.Fatalf("allow %v rule %q (%s), want %v %q", d.Allow, d.Rule, d.Reason, tt.allow, tt.rule)
			}
			var keys []string
			for _, l := range d.Limits {
				keys = append(keys, l.Key)
			}
			if fmt.Sprint(keys) != fmt.Sprint(tt.limits) || d.DualControl != tt.dual {
				t.Fatalf("limits %v dual %v, want %v %v", keys, d.DualControl, tt.limits, tt.dual)
			}
		})
	}
}

// TestSamePerson: persons are the policy's names, compared without regard
// to case or surrounding spaces; an identity without a name is a person
// of its own; an identity the policy does not list is nobody's.
func TestSamePerson(t *testing.T) {
	p, err := Parse("persons.yaml", []byte(`
version: 1
roles: {support: {operations: [ApproveReveal]}}
identities:
  - {id: "spiffe://t/alice", name: alice, roles: [support]}
  - {id: "spiffe://t/alice-laptop", name: "Alice ", roles: [support]}
  - {id: "spki:sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0", name: alice, roles: [support]}
  - {id: "spiffe://t/bob", name: bob, roles: [support]}
  - {id: "spiffe://t/nameless", roles: [support]}
  - {id: "spiffe://t/other", name: "spiffe://t/nameless", roles: [support]}
`), ops)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		a, b string
		same bool
	}{
		{"spiffe://t/alice", "spiffe://t/alice", true},
		{"spiffe://t/alice", "spiffe://t/alice-laptop", true},
		{"spiffe://t/alice-laptop", "spki:sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0", true},
		{"spiffe://t/alice", "spiffe://t/bob", false},
		{"spiffe://t/nameless", "spiffe://t/bob", false},
		{"spiffe://t/nameless", "spiffe://t/nameless", true},
		// A name is a name: one that spells another identity's id is
		// that identity's person.
		{"spiffe://t/nameless", "spiffe://t/other", true},
		{"spiffe://t/alice", "spiffe://t/unlisted", false},
		{"spiffe://t/unlisted", "spiffe://t/unlisted", false},
	}
	for _, tt := range tests {
		if got := p.SamePerson(tt.a, tt.b); got != tt.same {
			t.Errorf("SamePerson(%s, %s) = %v, want %v", tt.a, tt.b, got, tt.same)
		}
	}
	if person, ok := p.Person("spiffe://t/nameless"); !ok || person != "spiffe://t/nameless" {
		t.Errorf("Person of a nameless identity: %q %v", person, ok)
	}
	if _, ok := p.Person("spiffe://t/unlisted"); ok {
		t.Error("Person of an unlisted identity")
	}
}
