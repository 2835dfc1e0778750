package daemon

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Revocation: the client CRLs (-client-crl), checked at every TLS
// handshake and again on every request, so that a connection opened before
// a certificate was revoked cannot keep using it past the reload that
// brought the new CRL.
//
// A CRL file holds one or more CRLs, PEM ("X509 CRL" blocks) or a single
// DER one; each must be signed by a CA of the client CA bundle, and a
// certificate is checked against the CRL of the CA that issued it. A CA
// without a CRL in the file is not checked.
//
// Fail closed: once the nextUpdate of any CRL in force has passed, every
// client certificate is refused (at the handshake and per request) until
// a fresh CRL is loaded. A CRL already past its nextUpdate, or without
// one, is refused when loaded.

// Errors a refused client certificate's handshake or request carries.
var (
	ErrRevoked    = errors.New("client certificate revoked")
	ErrCRLExpired = errors.New("client CRL expired (past its nextUpdate): every client certificate is refused until a fresh CRL is loaded")
)

// Revocations is a parsed client CRL file. The zero value and nil revoke
// nothing.
type Revocations struct {
	crls []*crl
}

type crl struct {
	issuer     []byte // the issuing CA's raw subject
	name       string // the issuer's name, for errors
	thisUpdate time.Time
	nextUpdate time.Time
	serials    map[string]bool // big.Int.String() of each revoked serial
}

// ParseCRLs reads a CRL file (PEM, one or more CRLs, or DER, one), checks
// each CRL's signature against cas (the client CAs) and that its
// nextUpdate is after now.
func ParseCRLs(b []byte, cas []*x509.Certificate, now time.Time) (*Revocations, error) {
	var ders [][]byte
	if bytes.Contains(b, []byte("-----BEGIN")) {
		rest := b
		for {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if blk.Type != "X509 CRL" {
				return nil, fmt.Errorf("CRL file: unexpected PEM block %q (want X509 CRL)", blk.Type)
			}
			ders = append(ders, blk.Bytes)
		}
		if len(ders) == 0 {
			return nil, errors.New("CRL file: no PEM block")
		}
	} else {
		ders = [][]byte{b}
	}
	r := &Revocations{}
	seen := map[string]bool{}
	for i, der := range ders {
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("CRL %d: %w", i+1, err)
		}
		var signer *x509.Certificate
		for _, ca := range cas {
			if bytes.Equal(ca.RawSubject, l.RawIssuer) && l.CheckSignatureFrom(ca) == nil {
				signer = ca
				break
			}
		}
		if signer == nil {
			return nil, fmt.Errorf("CRL %d (issuer %q): not signed by a client CA", i+1, l.Issuer.String())
		}
		if seen[string(l.RawIssuer)] {
			return nil, fmt.Errorf("CRL %d (issuer %q): a second CRL of the same CA", i+1, l.Issuer.String())
		}
		seen[string(l.RawIssuer)] = true
		if l.NextUpdate.IsZero() {
			return nil, fmt.Errorf("CRL %d (issuer %q): no nextUpdate", i+1, l.Issuer.String())
		}
		if !now.Before(l.NextUpdate) {
			return nil, fmt.Errorf("CRL %d (issuer %q): expired at its nextUpdate %s", i+1, l.Issuer.String(), l.NextUpdate.UTC().Format(time.RFC3339))
		}
		c := &crl{issuer: l.RawIssuer, name: l.Issuer.String(), thisUpdate: l.ThisUpdate, nextUpdate: l.NextUpdate, serials: map[string]bool{}}
		for _, e := range l.RevokedCertificateEntries {
			if e.SerialNumber != nil {
				c.serials[e.SerialNumber.String()] = true
			}
		}
		r.crls = append(r.crls, c)
	}
	return r, nil
}

// ErrOlderCRL: a CRL file that would put an older CRL of a CA in force
// than the one in force, undoing the revocations made since.
var ErrOlderCRL = errors.New("older than the CRL in force")

// NotOlder refuses r if any of its CRLs was issued (thisUpdate) before the
// CRL of the same CA in old: reloading an old copy of the file must not
// un-revoke a certificate.
func (r *Revocations) NotOlder(old *Revocations) error {
	if r == nil || old == nil {
		return nil
	}
	for _, n := range r.crls {
		for _, o := range old.crls {
			if bytes.Equal(n.issuer, o.issuer) && n.thisUpdate.Before(o.thisUpdate) {
				return fmt.Errorf("CRL of %q issued %s: %w (issued %s)", n.name, n.thisUpdate.UTC().Format(time.RFC3339), ErrOlderCRL, o.thisUpdate.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

// Revocations returns the client CRLs in force (nil: none).
func (s *Server) Revocations() *Revocations { return s.revocations.Load() }

// Len is the number of CRLs.
func (r *Revocations) Len() int {
	if r == nil {
		return 0
	}
	return len(r.crls)
}

// check refuses certs if any is revoked by the CRL of its issuer, or if
// any CRL is past its nextUpdate at now.
func (r *Revocations) check(certs []*x509.Certificate, now time.Time) error {
	if r == nil {
		return nil
	}
	for _, c := range r.crls {
		if !now.Before(c.nextUpdate) {
			return ErrCRLExpired
		}
	}
	for _, cert := range certs {
		if cert.SerialNumber == nil {
			continue
		}
		for _, c := range r.crls {
			if bytes.Equal(c.issuer, cert.RawIssuer) && c.serials[serialKey(cert.SerialNumber)] {
				return fmt.Errorf("%w (serial %s)", ErrRevoked, cert.SerialNumber.Text(16))
			}
		}
	}
	return nil
}

func serialKey(n *big.Int) string { return n.String() }

// SetRevocations puts r in force: handshakes from now on are checked
// against it, and so is every request from now on, on connections old and
// new. Remembered chains are forgotten, so nothing verified under the old
// CRL answers for the new one.
func (s *Server) SetRevocations(r *Revocations) {
	s.revocations.Store(r)
	s.verified.reset()
}

// verifyConn is the API listener's tls.Config.VerifyConnection: it runs
// after the chain verified against the client CAs, on every handshake
// (resumed ones too, though the listener issues no tickets), and refuses a
// revoked certificate (or any, once a CRL has expired).
func (s *Server) verifyConn(cs tls.ConnectionState) error {
	r := s.revocations.Load()
	now := s.now()
	if err := r.check(cs.PeerCertificates, now); err != nil {
		return err
	}
	for _, ch := range cs.VerifiedChains {
		if err := r.check(ch, now); err != nil {
			return err
		}
	}
	return nil
}
