// Package policy decides who may do what. A policy file maps caller
// identities to roles and roles to operations, with constraints: ticket
// references, rate limits, dual control and the re-wrap targets a role may
// ask for. Anything the file does not allow is denied.
//
// The package does no I/O: the daemon reads the file, keeps rate-limit
// counters and pending approvals in its store, and asks Decide for every
// request. A Policy is immutable, so the daemon swaps a whole new one in on
// reload while requests in flight finish under the old.
package policy

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/escrowd/escrowd/escrow/bundle"
)

// Version is the policy file format version.
const Version = 1

// Error is a policy file error, with the file and line it is about.
type Error struct {
	File   string
	Line   int
	Reason string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Reason)
}

// ErrInvalid is wrapped by every *Error, for errors.Is.
var ErrInvalid = errors.New("invalid policy")

func (e *Error) Unwrap() error { return ErrInvalid }

// Scope says what a rate limit counts per.
type Scope string

const (
	PerUser   Scope = "user"   // per group and user
	PerGroup  Scope = "group"  // per group
	PerCaller Scope = "caller" // per caller identity
	PerAll    Scope = "global" // one counter for everyone
)

// Limit is a rate limit the daemon must take before it serves a request:
// a burst of Max, then one per Window/Max (store.RateLimit.Take). Key
// names its state in the store; Decide builds it only from the limit's
// name and scope and from ids that passed ValidID, so it is at most
// MaxLimitKey bytes, and two different scopes never share a key.
type Limit struct {
	Name   string
	Key    string
	Max    int
	Window time.Duration
}

// Request is what Decide needs to know of a request.
type Request struct {
	// Identity is the caller's verified identity ("spiffe://…" or
	// "spki:sha256:HEX"); empty for a caller without a valid certificate.
	Identity  string
	Operation string
	Group     string
	User      string
	Ticket    string
	// Targets lists the re-wrap target kinds asked for (member, device,
	// unlock, escrow).
	Targets []string
	// Batch marks the call of an operation whose items are decided one by
	// one (BatchRewrap). Decide then answers for the call alone: an
	// identity, a role that grants the operation for some target, and the
	// ticket; it returns no limits and no dual control. The daemon asks
	// again for each item, with the item's Group and Targets and Batch
	// false, and counts, limits and flags each item under its own group.
	Batch bool
}

// Decision is Decide's answer.
type Decision struct {
	Allow bool
	// Reason explains a denial in words a caller can act on; it names no
	// secret and no other identity.
	Reason string
	// Rule names the rule that denied the request (one of the Rule*
	// values): unlike Reason it is a fixed set, fit for a metric label.
	Rule string
	// Name is the identity's display name from the policy, for the audit.
	Name  string
	Roles []string
	// Limits must each have room, taken atomically, before the request runs.
	Limits []Limit
	// DualControl: a second, different identity must approve within
	// ApprovalTimeout.
	DualControl     bool
	ApprovalTimeout time.Duration
}

// The rules a denial names in Decision.Rule.
const (
	// RuleIdentity: no identity, or one the policy does not list.
	RuleIdentity = "identity"
	// RuleRole: no role of the identity grants the operation (for the
	// target kinds asked for).
	RuleRole = "role"
	// RuleTicket: the operation needs a ticket reference matching the
	// policy's pattern.
	RuleTicket = "ticket"
	// RuleInvalid: the request's group or user id is not an id (ValidID),
	// so no rate-limit key is built from it. Not a policy refusal: the
	// request is malformed (the daemon answers INVALID_ARGUMENT).
	RuleInvalid = "invalid"
)

// Bounds of what goes into a rate-limit key.
const (
	// MaxIDLength bounds a group or user id (bundle.MaxIDLength).
	MaxIDLength = bundle.MaxIDLength
	// MaxIdentity bounds an identity: a SPIFFE ID is at most 2,048 bytes
	// (the SPIFFE ID specification); spki:sha256:HEX is 76.
	MaxIdentity = 2048
	// MaxLimitName bounds a rate limit's name.
	MaxLimitName = 64
	// MaxLimitKey bounds Limit.Key: name|scope kind|scope, where the
	// scope is an identity, or at most two escaped ids (escapeID) and a
	// slash.
	MaxLimitKey = MaxLimitName + 1 + len("caller") + 1 + max(MaxIdentity, 2*3*MaxIDLength+1)
	// MaxLimit and MaxWindow bound a rate limit's limit and window.
	MaxLimit  = 1_000_000_000
	MaxWindow = 366 * 24 * time.Hour
)

// ValidID reports whether id is a group or user id as every handler takes
// it: 1 to MaxIDLength bytes of printable ASCII without spaces
// (bundle.ValidateID).
func ValidID(id string) bool { return bundle.ValidateID(id) == nil }

// Policy is a parsed, checked policy. It is immutable.
type Policy struct {
	file       string
	identities map[string]*identity
	roles      map[string]*role
	tickets    *ticketRule
	dual       *dualRule
	limits     []limitRule
	// domains binds each SPIFFE trust domain to the "spki:sha256:HEX"
	// names of the CAs that may issue its IDs; nil: no binding.
	domains map[string][]string
}

type identity struct {
	id, name string
	roles    []string
}

type role struct {
	ops     map[string]bool
	targets map[string]bool // nil: any target
}

type ticketRule struct {
	ops map[string]bool
	// pattern is the file's pattern anchored at both ends: a ticket
	// matches only as a whole.
	pattern *regexp.Regexp
	source  string // the pattern as the file wrote it, for denials
}

type dualRule struct {
	ops     map[string]bool
	groups  []string
	timeout time.Duration
}

type limitRule struct {
	name   string
	ops    map[string]bool
	per    Scope
	max    int
	window time.Duration
}

// TargetKinds are the re-wrap targets a role may be limited to.
var TargetKinds = []string{"member", "device", "unlock", "escrow"}

// Decide answers one request. It is safe for concurrent use.
func (p *Policy) Decide(r Request) Decision {
	deny := func(format string, args ...any) Decision {
		return Decision{Reason: fmt.Sprintf(format, args...), Rule: RuleIdentity}
	}
	if r.Identity == "" {
		return deny("no valid client certificate")
	}
	id, ok := p.identities[r.Identity]
	if !ok {
		return deny("identity %s is not in the policy", r.Identity)
	}
	d := Decision{Name: id.name, Roles: id.roles}
	var grant *role
	for _, rn := range id.roles {
		ro := p.roles[rn]
		if !ro.ops[r.Operation] {
			continue
		}
		if ro.targets != nil && r.Batch && len(ro.targets) == 0 {
			continue // grants the operation for no target at all
		}
		if ro.targets != nil && !r.Batch {
			allowed := true
			for _, t := range r.Targets {
				if !ro.targets[t] {
					allowed = false
				}
			}
			if !allowed {
				continue
			}
		}
		grant = ro
		break
	}
	if grant == nil {
		d.Reason, d.Rule = fmt.Sprintf("%s may not call %s", id.name, r.Operation), RuleRole
		if len(r.Targets) > 0 {
			d.Reason += " for target kinds " + strings.Join(r.Targets, ", ")
		}
		return d
	}
	if t := p.tickets; t != nil && t.ops[r.Operation] && !t.pattern.MatchString(r.Ticket) {
		d.Reason, d.Rule = fmt.Sprintf("%s needs a ticket reference matching %s as a whole", r.Operation, t.source), RuleTicket
		return d
	}
	if r.Batch {
		// Each item is counted, limited and flagged on its own.
		d.Allow = true
		return d
	}
	// Keys are built from checked ids only: an id of a megabyte would make
	// a key no store takes, and a malformed request would count against
	// the caller's limits before its handler refused it. Empty is an id
	// the request does not have (a batch item's user): its handler
	// refuses it if it needs one.
	if p.limited(r.Operation) {
		for _, f := range []struct{ name, id string }{{"group_id", r.Group}, {"user_id", r.User}} {
			if err := bundle.ValidateID(f.id); f.id != "" && err != nil {
				d.Reason, d.Rule = fmt.Sprintf("%s: %v", f.name, err), RuleInvalid
				return d
			}
		}
	}
	for _, l := range p.limits {
		if !l.ops[r.Operation] {
			continue
		}
		var scope string
		switch l.per {
		case PerUser:
			// Ids may hold '/': escaped, group "a/b" with user "c" and
			// group "a" with user "b/c" are two keys.
			scope = escapeID(r.Group) + "/" + escapeID(r.User)
		case PerGroup:
			scope = r.Group
		case PerCaller:
			scope = r.Identity
		case PerAll:
			scope = "*"
		}
		d.Limits = append(d.Limits, Limit{Name: l.name, Key: l.name + "|" + string(l.per) + "|" + scope, Max: l.max, Window: l.window})
	}
	if dc := p.dual; dc != nil && dc.ops[r.Operation] && matchAny(dc.groups, r.Group) {
		d.DualControl, d.ApprovalTimeout = true, dc.timeout
	}
	d.Allow = true
	return d
}

// limited reports whether any rate limit counts op.
func (p *Policy) limited(op string) bool {
	for _, l := range p.limits {
		if l.ops[op] {
			return true
		}
	}
	return false
}

// escapeID writes '%' and '/' of an id as %25 and %2F, so that a slash
// can join two ids into one key unambiguously. An id with neither keeps
// the key it had before escaping existed.
func escapeID(id string) string {
	if !strings.ContainsAny(id, "%/") {
		return id
	}
	return strings.NewReplacer("%", "%25", "/", "%2F").Replace(id)
}

// ErrTrustDomain: a SPIFFE ID issued by a CA its trust domain is not
// bound to.
var ErrTrustDomain = errors.New("trust domain not issued by this CA")

// CheckIssuer checks that a certificate's SPIFFE IDs may come from the CAs
// its chain verified by (issuers, "spki:sha256:HEX" names): each ID's
// trust domain must be listed in trust_domains with one of those CAs.
// Without trust_domains every CA may issue every trust domain.
func (p *Policy) CheckIssuer(spiffeIDs, issuers []string) error {
	if p.domains == nil {
		return nil
	}
	for _, id := range spiffeIDs {
		td := TrustDomain(id)
		cas, ok := p.domains[td]
		if !ok {
			return fmt.Errorf("%w: %s: trust domain %q is not in the policy's trust_domains", ErrTrustDomain, id, td)
		}
		if !slices.ContainsFunc(issuers, func(i string) bool { return slices.Contains(cas, i) }) {
			return fmt.Errorf("%w: %s: no CA of its chain is bound to trust domain %q", ErrTrustDomain, id, td)
		}
	}
	return nil
}

// TrustDomain is the trust domain of a spiffe:// ID ("" if it has none).
func TrustDomain(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	return strings.ToLower(td)
}

// Has reports whether the policy lists id.
func (p *Policy) Has(id string) bool {
	_, ok := p.identities[id]
	return ok
}

// Person returns the person an identity belongs to, as the policy names
// them: the identity's name, or the identity itself when it has none.
// ok is false for an identity the policy does not list.
//
// A person may hold several certificates, each an identity of the
// policy; giving them the same name makes them one person, and dual
// control compares persons, never certificates.
func (p *Policy) Person(id string) (person string, ok bool) {
	i, ok := p.identities[id]
	if !ok {
		return "", false
	}
	return i.name, true
}

// SamePerson reports whether identities a and b are listed and belong to
// one person: their names are equal, ignoring case ("Alice" and "alice"
// are taken for one person, and so are names that differ only in spaces
// around them: this errs on the side of refusing an approval).
func (p *Policy) SamePerson(a, b string) bool {
	pa, oka := p.Person(a)
	pb, okb := p.Person(b)
	return oka && okb && strings.EqualFold(strings.TrimSpace(pa), strings.TrimSpace(pb))
}

// Name returns the display name of an identity, or the identity itself.
func (p *Policy) Name(id string) string {
	if i, ok := p.identities[id]; ok {
		return i.name
	}
	return id
}

// anchored compiles pattern so that it matches a whole string only.
func anchored(pattern string) (*regexp.Regexp, error) {
	return regexp.Compile(`^(?:` + pattern + `)$`)
}

func matchAny(patterns []string, s string) bool {
	for _, p := range patterns {
		if globMatch(p, s) {
			return true
		}
	}
	return false
}

// globMatch reports whether the group pattern p matches all of s: '*'
// matches any run of bytes, '/' included, '?' exactly one byte, and every
// other byte itself, case and all. Group ids are case-sensitive printable
// ASCII and may hold '/', so "vip-*" must flag "vip-eu/ceo" too, and need
// not flag "VIP-ceo", which is another group.
func globMatch(p, s string) bool {
	// The classic greedy match with one backtrack point: the last '*'.
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]) && p[pi] != '*':
			pi++
			si++
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case star >= 0:
			mark++
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// validLimitName reports whether a rate limit's name fits in a key: 1 to
// MaxLimitName bytes of printable ASCII, no space, no '|'.
func validLimitName(name string) bool {
	if name == "" || len(name) > MaxLimitName {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' || c == '|' {
			return false
		}
	}
	return true
}

// checkGroupPattern refuses a dual-control group pattern that could never
// match a group id, or that uses the bracket classes and backslash escapes
// of path.Match, which flagged groups before: their meaning would change
// without a word.
func checkGroupPattern(p string) error {
	if p == "" {
		return errors.New("empty")
	}
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c <= ' ' || c > '~':
			return fmt.Errorf("byte %d is not printable ASCII: group ids are printable ASCII without spaces", i)
		case c == '[' || c == ']' || c == '\\':
			return fmt.Errorf("%q at byte %d: only * and ? are special, and [ ] \\ are not allowed", c, i)
		}
	}
	return nil
}

// The file format, decoded with the line of every value kept.

type located[T any] struct {
	V    T
	Line int
}

func (l *located[T]) UnmarshalYAML(n *yaml.Node) error {
	l.Line = n.Line
	// Node.Decode does not inherit the file decoder's KnownFields, so a
	// misspelt key inside a section (tickets: {requird_for: …}) would drop
	// the constraint it meant to set without a word: check keys here.
	if err := knownKeys(n, reflect.TypeFor[T]()); err != nil {
		return err
	}
	return n.Decode(&l.V)
}

// knownKeys refuses a mapping key that names no field of struct type t.
func knownKeys(n *yaml.Node, t reflect.Type) error {
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return nil
	}
	fields := map[string]bool{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		fields[name] = true
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !fields[k.Value] {
			return fmt.Errorf("line %d: field %s not found in type %s", k.Line, k.Value, t)
		}
	}
	return nil
}

type fileFormat struct {
	Version    located[int]                 `yaml:"version"`
	Identities []fileIdentity               `yaml:"identities"`
	Roles      map[string]located[fileRole] `yaml:"roles"`
	Tickets    *located[fileTickets]        `yaml:"tickets"`
	Dual       *located[fileDual]           `yaml:"dual_control"`
	Limits     []located[fileLimit]         `yaml:"rate_limits"`
	Domains    []located[fileDomain]        `yaml:"trust_domains"`
}

type fileDomain struct {
	Domain located[string]   `yaml:"domain"`
	CAs    []located[string] `yaml:"cas"`
}

type fileIdentity struct {
	ID    located[string]   `yaml:"id"`
	Name  string            `yaml:"name"`
	Roles []located[string] `yaml:"roles"`
}

type fileRole struct {
	Operations    []located[string] `yaml:"operations"`
	RewrapTargets []located[string] `yaml:"rewrap_targets"`
}

type fileTickets struct {
	RequiredFor []located[string] `yaml:"required_for"`
	Pattern     located[string]   `yaml:"pattern"`
}

type fileDual struct {
	Operations []located[string] `yaml:"operations"`
	Groups     []located[string] `yaml:"groups"`
	Timeout    located[string]   `yaml:"timeout"`
}

type fileLimit struct {
	Name       located[string]   `yaml:"name"`
	Operations []located[string] `yaml:"operations"`
	Per        located[string]   `yaml:"per"`
	Limit      located[int]      `yaml:"limit"`
	Window     located[string]   `yaml:"window"`
}

// MaxSize bounds a policy file.
const MaxSize = 1 << 20

var (
	spiffeID = regexp.MustCompile(`^spiffe://[a-z0-9.\-_]+(/[A-Za-z0-9.\-_]+)*$`)
	spkiID   = regexp.MustCompile(`^spki:sha256:[0-9a-f]{64}$`)
	// trustDomainRE is the trust domain part of spiffeID.
	trustDomainRE = regexp.MustCompile(`^[a-z0-9.\-_]+$`)
	lineRE        = regexp.MustCompile(`line (\d+)`)
)

// ValidIdentity reports whether id has one of the supported forms, within
// MaxIdentity bytes.
func ValidIdentity(id string) bool {
	return len(id) <= MaxIdentity && (spiffeID.MatchString(id) || spkiID.MatchString(id))
}

// Parse checks a policy file. file names it in errors; operations lists
// the operations the daemon has, so that a typo is an error, not a silent
// deny. Errors are *Error with the line of the offending value.
func Parse(file string, data []byte, operations []string) (*Policy, error) {
	fail := func(line int, format string, args ...any) (*Policy, error) {
		return nil, &Error{File: file, Line: line, Reason: fmt.Sprintf(format, args...)}
	}
	if len(data) > MaxSize {
		return fail(0, "file is larger than %d bytes", MaxSize)
	}
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		line := 0
		if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			// yaml.v3 numbers these context errors from 0 where it
			// numbers the rest from 1.
			if strings.Contains(err.Error(), "did not find expected") {
				line++
			}
		}
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		msg = lineRE.ReplaceAllString(msg, "")
		msg = strings.TrimLeft(msg, ": ")
		if strings.Contains(err.Error(), "EOF") {
			msg = "empty policy"
		}
		return fail(line, "%s", strings.Join(strings.Fields(msg), " "))
	}
	if f.Version.V != Version {
		return fail(f.Version.Line, "version must be %d", Version)
	}
	known := map[string]bool{}
	for _, o := range operations {
		known[o] = true
	}
	opSet := func(ops []located[string], what string) (map[string]bool, *Error) {
		set := map[string]bool{}
		for _, o := range ops {
			if !known[o.V] {
				return nil, &Error{File: file, Line: o.Line, Reason: fmt.Sprintf("%s: unknown operation %q", what, o.V)}
			}
			set[o.V] = true
		}
		return set, nil
	}
	p := &Policy{file: file, identities: map[string]*identity{}, roles: map[string]*role{}}

	roleNames := make([]string, 0, len(f.Roles))
	for name := range f.Roles {
		roleNames = append(roleNames, name)
	}
	slices.Sort(roleNames)
	for _, name := range roleNames {
		r := f.Roles[name]
		ops, err := opSet(r.V.Operations, "role "+name)
		if err != nil {
			return nil, err
		}
		if len(ops) == 0 {
			return fail(r.Line, "role %s grants no operations", name)
		}
		ro := &role{ops: ops}
		if r.V.RewrapTargets != nil {
			ro.targets = map[string]bool{}
			for _, t := range r.V.RewrapTargets {
				if !slices.Contains(TargetKinds, t.V) {
					return fail(t.Line, "role %s: unknown rewrap target %q (want one of %s)", name, t.V, strings.Join(TargetKinds, ", "))
				}
				ro.targets[t.V] = true
			}
		}
		p.roles[name] = ro
	}
	if f.Domains != nil {
		p.domains = map[string][]string{}
		for _, d := range f.Domains {
			td := d.V.Domain.V
			if !trustDomainRE.MatchString(td) {
				return fail(d.V.Domain.Line, "trust_domains: %q is not a trust domain (lower case letters, digits, '.', '-', '_')", td)
			}
			if _, dup := p.domains[td]; dup {
				return fail(d.V.Domain.Line, "trust_domains: %s is listed twice", td)
			}
			if len(d.V.CAs) == 0 {
				return fail(d.Line, "trust_domains: %s names no CA", td)
			}
			var cas []string
			for _, ca := range d.V.CAs {
				if !spkiID.MatchString(ca.V) {
					return fail(ca.Line, "trust_domains: %s: CA %q is not spki:sha256:HEX (the SHA-256 of the CA's public key)", td, ca.V)
				}
				cas = append(cas, ca.V)
			}
			p.domains[td] = cas
		}
	}
	for _, i := range f.Identities {
		if !ValidIdentity(i.ID.V) {
			if len(i.ID.V) > MaxIdentity {
				return fail(i.ID.Line, "identity of %d bytes: at most %d", len(i.ID.V), MaxIdentity)
			}
			return fail(i.ID.Line, "identity %q is neither spiffe://TRUST-DOMAIN/PATH nor spki:sha256:HEX", i.ID.V)
		}
		if _, dup := p.identities[i.ID.V]; dup {
			return fail(i.ID.Line, "identity %s is listed twice", i.ID.V)
		}
		if len(i.Roles) == 0 {
			return fail(i.ID.Line, "identity %s has no roles", i.ID.V)
		}
		if td := TrustDomain(i.ID.V); td != "" && p.domains != nil {
			if _, ok := p.domains[td]; !ok {
				return fail(i.ID.Line, "identity %s: trust domain %s is not in trust_domains", i.ID.V, td)
			}
		}
		id := &identity{id: i.ID.V, name: i.Name}
		if id.name == "" {
			id.name = i.ID.V
		}
		for _, r := range i.Roles {
			if _, ok := p.roles[r.V]; !ok {
				return fail(r.Line, "identity %s names unknown role %q", i.ID.V, r.V)
			}
			id.roles = append(id.roles, r.V)
		}
		p.identities[i.ID.V] = id
	}
	if t := f.Tickets; t != nil {
		ops, err := opSet(t.V.RequiredFor, "tickets")
		if err != nil {
			return nil, err
		}
		if t.V.Pattern.V == "" {
			return fail(t.Line, "tickets: pattern is required")
		}
		if _, rerr := regexp.Compile(t.V.Pattern.V); rerr != nil {
			return fail(t.V.Pattern.Line, "tickets: pattern: %v", rerr)
		}
		// A ticket must match the whole pattern, whether or not the file
		// wrote ^ and $: unanchored, SUP-[0-9]+ would take "x SUP-1 x".
		re, rerr := anchored(t.V.Pattern.V)
		if rerr != nil {
			return fail(t.V.Pattern.Line, "tickets: pattern: %v", rerr)
		}
		if re.MatchString("") {
			return fail(t.V.Pattern.Line, "tickets: pattern matches an empty ticket")
		}
		p.tickets = &ticketRule{ops: ops, pattern: re, source: t.V.Pattern.V}
	}
	if d := f.Dual; d != nil {
		ops, err := opSet(d.V.Operations, "dual_control")
		if err != nil {
			return nil, err
		}
		dr := &dualRule{ops: ops}
		for _, g := range d.V.Groups {
			if perr := checkGroupPattern(g.V); perr != nil {
				return fail(g.Line, "dual_control: group pattern %q: %v", g.V, perr)
			}
			dr.groups = append(dr.groups, g.V)
		}
		to, derr := time.ParseDuration(d.V.Timeout.V)
		if derr != nil || to < time.Second || to > 24*time.Hour {
			return fail(d.V.Timeout.Line, "dual_control: timeout %q must be a duration from 1s to 24h", d.V.Timeout.V)
		}
		dr.timeout = to
		p.dual = dr
	}
	names := map[string]bool{}
	for _, l := range f.Limits {
		lr := limitRule{name: l.V.Name.V, per: Scope(l.V.Per.V), max: l.V.Limit.V}
		if !validLimitName(lr.name) {
			return fail(l.Line, "rate_limits: each needs a name of 1 to %d bytes of printable ASCII without spaces or '|'", MaxLimitName)
		}
		if names[lr.name] {
			return fail(l.V.Name.Line, "rate_limits: %s is listed twice", lr.name)
		}
		names[lr.name] = true
		ops, err := opSet(l.V.Operations, "rate limit "+lr.name)
		if err != nil {
			return nil, err
		}
		if len(ops) == 0 {
			return fail(l.Line, "rate limit %s names no operations", lr.name)
		}
		lr.ops = ops
		switch lr.per {
		case PerUser, PerGroup, PerCaller, PerAll:
		default:
			return fail(l.V.Per.Line, "rate limit %s: per %q must be user, group, caller or global", lr.name, l.V.Per.V)
		}
		if lr.max < 1 || lr.max > MaxLimit {
			return fail(l.V.Limit.Line, "rate limit %s: limit must be at least 1 and at most %d", lr.name, MaxLimit)
		}
		w, werr := time.ParseDuration(l.V.Window.V)
		if werr != nil || w < time.Second || w > MaxWindow {
			return fail(l.V.Window.Line, "rate limit %s: window %q must be a duration from 1s to %s", lr.name, l.V.Window.V, MaxWindow)
		}
		lr.window = w
		p.limits = append(p.limits, lr)
	}
	return p, nil
}
