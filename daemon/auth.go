package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/policy"
)

// identity is what the daemon knows of a caller from its connection.
//
// The TLS handshake only asks for a client certificate (and checks the
// caller holds its key); the chain is verified here instead, so that a
// caller with an expired or foreign certificate reaches the interceptor
// and its refusal is audited like any other denial.
type identity struct {
	// ids are the names policy may know the caller by: its SPIFFE IDs,
	// then "spki:sha256:HEX" of its public key, as MinIO KES names keys.
	ids []string
	// issuers are the "spki:sha256:HEX" names of the CAs of the chains
	// the certificate verified by (every certificate but the leaf), for
	// the policy's trust domains.
	issuers []string
	// err says why the certificate is not valid; nil when verified.
	err  error
	addr string
}

// spiffeIDs are the caller's SPIFFE IDs.
func (id identity) spiffeIDs() []string {
	var out []string
	for _, i := range id.ids {
		if strings.HasPrefix(i, "spiffe://") {
			out = append(out, i)
		}
	}
	return out
}

// name is the caller's identity for the audit record.
func (id identity) name(p *policy.Policy) string {
	switch {
	case len(id.ids) == 0:
		return "anonymous@" + id.addr
	case id.err != nil:
		return "unverified " + id.ids[len(id.ids)-1]
	}
	return id.match(p)
}

// match returns the first of the caller's ids the policy knows, or the
// first id.
func (id identity) match(p *policy.Policy) string {
	if id.err != nil || len(id.ids) == 0 {
		return ""
	}
	for _, i := range id.ids {
		if p.Has(i) {
			return i
		}
	}
	return id.ids[0]
}

// SPKIIdentity is the policy name of a public key.
func SPKIIdentity(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "spki:sha256:" + hex.EncodeToString(sum[:])
}

func (s *Server) identify(ctx context.Context) identity {
	var id identity
	p, ok := peer.FromContext(ctx)
	if !ok {
		id.err = fmt.Errorf("no peer")
		return id
	}
	if p.Addr != nil {
		id.addr = p.Addr.String()
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		id.err = fmt.Errorf("no client certificate")
		return id
	}
	certs := info.State.PeerCertificates
	leaf := certs[0]
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			id.ids = append(id.ids, u.String())
		}
	}
	id.ids = append(id.ids, SPKIIdentity(leaf))
	now := s.now()
	// Revocation first, remembered chain or not: a certificate revoked
	// by a CRL loaded since its connection opened is refused from the
	// reload on.
	if err := s.revocations.Load().check(certs, now); err != nil {
		id.err = err
		return id
	}
	key := chainKey(certs)
	gen := s.verified.generation()
	if issuers, ok := s.verified.valid(key, now); ok {
		id.issuers = issuers
		return id
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.clientCAs(),
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime:   now,
	})
	if err != nil {
		id.err = fmt.Errorf("client certificate not valid: %s", strings.TrimPrefix(err.Error(), "x509: "))
		return id
	}
	id.issuers = chainIssuers(chains)
	s.verified.add(key, gen, now, chains, id.issuers)
	return id
}

// clientCAs are the client CAs in force.
func (s *Server) clientCAs() *x509.CertPool {
	if c := s.creds.Load(); c != nil {
		return c.cas
	}
	return s.cfg.ClientCAs
}

// Verifying a chain costs more than the rest of a cheap request (a
// quarter of a reveal's CPU, measured by make bench), and the same caller
// presents the same chain on every request of every connection. So a
// chain that verified is remembered, by the hash of its certificates, for
// at most verifyTTL and never past the moment the first of its
// certificates expires: what a fresh check would say. Failures are not
// remembered; they are refused and audited either way. New client CAs
// (SetCredentials) or a new CRL (SetRevocations) empty the cache, and
// revocation is checked outside it on every request.
const (
	verifyTTL     = 5 * time.Minute
	verifyEntries = 4096
)

type verifyCache struct {
	mu    sync.Mutex
	until map[[sha256.Size]byte]verified
	// gen counts resets: a verification that began before one (against
	// the CAs of before) is not remembered after it.
	gen uint64
}

type verified struct {
	until   time.Time
	issuers []string
}

// chainIssuers names the CAs of chains, each once.
func chainIssuers(chains [][]*x509.Certificate) []string {
	var out []string
	for _, ch := range chains {
		for _, c := range ch[1:] {
			if n := SPKIIdentity(c); !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out
}

// chainKey names the certificates a caller presented, in order.
func chainKey(certs []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	for _, c := range certs {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return k
}

func (c *verifyCache) valid(key [sha256.Size]byte, now time.Time) ([]string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.until[key]
	if ok && !now.Before(v.until) {
		delete(c.until, key)
		return nil, false
	}
	return v.issuers, ok
}

// reset forgets every remembered chain, and every verification under way.
func (c *verifyCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.until = nil
	c.gen++
}

// generation is the number of resets so far; pass it to add.
func (c *verifyCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// add remembers a chain that verified, unless the cache was reset since
// gen was read, before the verification began.
func (c *verifyCache) add(key [sha256.Size]byte, gen uint64, now time.Time, chains [][]*x509.Certificate, issuers []string) {
	// Valid until the earliest expiry along the chain that verified; and
	// not at all if a certificate is not yet valid by then (Verify checked
	// NotBefore against now).
	until := now.Add(verifyTTL)
	if len(chains) == 0 {
		return
	}
	for _, cert := range chains[0] {
		if cert.NotAfter.Before(until) {
			until = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	if c.until == nil || len(c.until) >= verifyEntries {
		// Many distinct callers within the TTL: start afresh rather than
		// track recency; the cost is one verification per caller.
		c.until = make(map[[sha256.Size]byte]verified)
	}
	c.until[key] = verified{until: until, issuers: issuers}
}

// Operations lists the operation names of the API, for policy checks.
func Operations() []string {
	var ops []string
	for _, sd := range []grpc.ServiceDesc{escrowdv1.SyncService_ServiceDesc, escrowdv1.SupportService_ServiceDesc, escrowdv1.SecurityService_ServiceDesc} {
		for _, m := range sd.Methods {
			ops = append(ops, m.MethodName)
		}
	}
	return ops
}

// Methods lists the full method names of the API ("/service/Method"), the
// values Observer.ObserveRPC reports for them.
func Methods() []string {
	var ms []string
	for _, sd := range []grpc.ServiceDesc{escrowdv1.SyncService_ServiceDesc, escrowdv1.SupportService_ServiceDesc, escrowdv1.SecurityService_ServiceDesc} {
		for _, m := range sd.Methods {
			ms = append(ms, "/"+sd.ServiceName+"/"+m.MethodName)
		}
	}
	return ms
}

func operation(fullMethod string) string {
	return fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
}

// Fields the policy and the audit record read from any request.
type (
	hasGroup  interface{ GetGroupId() string }
	hasUser   interface{ GetUserId() string }
	hasTicket interface{ GetTicket() string }
)

func requestFields(req any) (group, user, ticket string) {
	if r, ok := req.(hasGroup); ok {
		group = r.GetGroupId()
	}
	if r, ok := req.(hasUser); ok {
		user = r.GetUserId()
	}
	if r, ok := req.(hasTicket); ok {
		ticket = r.GetTicket()
	}
	return
}

// targets lists the re-wrap target kinds a request asks for.
func targets(req any) []string {
	switch r := req.(type) {
	case *escrowdv1.RewrapRequest:
		switch r.GetRecipient().GetKind() {
		case escrowdv1.Recipient_KIND_MEMBER:
			return []string{"member"}
		case escrowdv1.Recipient_KIND_DEVICE:
			return []string{"device"}
		}
		// No valid kind: the handler refuses the request as malformed.
		return nil
	case *escrowdv1.IssueUnlockCodesRequest:
		return []string{"unlock"}
	case *escrowdv1.RewrapToEscrowRequest:
		return []string{"escrow"}
	case *escrowdv1.RotateGroupKeyRequest:
		return rotateTargets(r)
	case *escrowdv1.BatchRewrapRequest:
		// Decided item by item: see batchItemTarget.
		return nil
	}
	return nil
}

type approverKey struct{}

// approvedBy returns the approver of a dual-control request, if any.
func approvedBy(ctx context.Context) string {
	a, _ := ctx.Value(approverKey{}).(string)
	return a
}

type callerKey struct{}

// callerID returns the verified policy identity of the request's caller.
func callerID(ctx context.Context) string {
	c, _ := ctx.Value(callerKey{}).(string)
	return c
}

// approvalPoll is how often a waiting dual-control request looks for its
// approval in the store, which several replicas may share.
const approvalPoll = 200 * time.Millisecond
