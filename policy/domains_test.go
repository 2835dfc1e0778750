package policy

import (
	"errors"
	"strings"
	"testing"
)

const (
	caA = "spki:sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	caB = "spki:sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// domainsPolicy is a policy whose trust_domains section is domains.
func domainsPolicy(domains string) string {
	return "version: 1\nroles:\n  r:\n    operations: [GetGroup]\n" +
		"identities:\n  - id: spiffe://a.test/alice\n    roles: [r]\n" + domains
}

// TestCheckIssuer: with trust_domains, a SPIFFE ID counts only from a CA
// bound to its trust domain, and a trust domain not listed counts from
// none; without it, any CA issues any trust domain.
func TestCheckIssuer(t *testing.T) {
	bound, err := Parse("p.yaml", []byte(domainsPolicy(
		"trust_domains:\n  - {domain: a.test, cas: ["+caA+"]}\n  - {domain: b.test, cas: ["+caB+", "+caA+"]}\n")), ops)
	if err != nil {
		t.Fatal(err)
	}
	unbound, err := Parse("p.yaml", []byte(domainsPolicy("")), ops)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		p       *Policy
		ids     []string
		issuers []string
		ok      bool
	}{
		{"bound CA", bound, []string{"spiffe://a.test/alice"}, []string{caA}, true},
		{"another CA", bound, []string{"spiffe://a.test/alice"}, []string{caB}, false},
		{"bound CA among the chain's", bound, []string{"spiffe://a.test/alice"}, []string{caB, caA}, true},
		{"domain bound to two CAs", bound, []string{"spiffe://b.test/bob"}, []string{caA}, true},
		{"domain not listed", bound, []string{"spiffe://c.test/carol"}, []string{caA}, false},
		{"upper case trust domain", bound, []string{"spiffe://A.TEST/alice"}, []string{caB}, false},
		{"userinfo in the authority", bound, []string{"spiffe://x@a.test/alice"}, []string{caA}, false},
		{"one of two IDs foreign", bound, []string{"spiffe://a.test/alice", "spiffe://b.test/bob"}, []string{caA, caB}, true},
		{"one of two IDs from the wrong CA", bound, []string{"spiffe://b.test/bob", "spiffe://a.test/alice"}, []string{caB}, false},
		{"no SPIFFE ID", bound, nil, []string{caB}, true},
		{"no trust_domains: any CA", unbound, []string{"spiffe://a.test/alice"}, []string{caB}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.CheckIssuer(tt.ids, tt.issuers)
			if tt.ok != (err == nil) || err != nil && !errors.Is(err, ErrTrustDomain) {
				t.Fatalf("CheckIssuer = %v, want ok %v", err, tt.ok)
			}
		})
	}
}

func TestTrustDomainErrors(t *testing.T) {
	tests := []struct {
		name, domains string
		line          int
		reason        string
	}{
		{"identity's domain not listed", "trust_domains:\n  - {domain: b.test, cas: [" + caB + "]}\n", 6, "trust domain a.test is not in trust_domains"},
		{"no CA", "trust_domains:\n  - {domain: a.test, cas: []}\n", 9, "names no CA"},
		{"CA not an SPKI hash", "trust_domains:\n  - {domain: a.test, cas: [my-ca]}\n", 9, `CA "my-ca" is not spki:sha256:HEX`},
		{"bad domain", "trust_domains:\n  - {domain: A.test, cas: [" + caA + "]}\n", 9, "not a trust domain"},
		{"listed twice", "trust_domains:\n  - {domain: a.test, cas: [" + caA + "]}\n  - {domain: a.test, cas: [" + caB + "]}\n", 10, "listed twice"},
		{"unknown key", "trust_domains:\n  - {domain: a.test, ca: [" + caA + "]}\n", 9, "field ca not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(domainsPolicy(tt.domains)), ops)
			var pe *Error
			if !errors.As(err, &pe) || pe.Line != tt.line || !strings.Contains(pe.Reason, tt.reason) {
				t.Fatalf("Parse error = %v, want line %d saying %q", err, tt.line, tt.reason)
			}
		})
	}
}
