package main

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
)

// Suites of escrow keys, as the daemon names them (escrow/bundle).
const (
	suiteECDHP256      = "ecdh-p256"
	suiteRSAOAEPSHA1   = "rsa-oaep-sha1"
	suiteRSAOAEPSHA256 = "rsa-oaep-sha256"
)

// keyFormat is an output format of `escrowctl group key`.
type keyFormat string

const (
	formatPEM keyFormat = "pem"
	formatDER keyFormat = "der"
	formatJWK keyFormat = "jwk"
)

var keyFormats = []keyFormat{formatPEM, formatDER, formatJWK}

// usageError is a mistake on the command line: escrowctl exits 2.
type usageError struct{ msg string }

func (e usageError) Error() string        { return e.msg }
func (e usageError) Is(target error) bool { return target == errUsage }

// parseKeyFormat accepts the values of `group key -format`.
func parseKeyFormat(s string) (keyFormat, error) {
	names := make([]string, len(keyFormats))
	for i, f := range keyFormats {
		if s == string(f) {
			return f, nil
		}
		names[i] = string(f)
	}
	return "", usageError{fmt.Sprintf("group key: unknown -format %q; accepted: %s", s, strings.Join(names, ", "))}
}

// escrowPublicKey is a group's escrow public key as GetEscrowKey returns it.
type escrowPublicKey struct {
	Group   string
	Version uint32
	Suite   string
	DER     []byte // PKIX SubjectPublicKeyInfo
}

// writeEscrowKey writes k to out in format f:
//   - pem: the metadata as "# " lines, then a PUBLIC KEY block without
//     headers, which OpenSSL, Node and Go read as is (they skip the lines
//     before -----BEGIN);
//   - der: the DER bytes alone; the metadata lines go to meta;
//   - jwk: one JSON object and a newline (see keyJWK).
func writeEscrowKey(out, meta io.Writer, k escrowPublicKey, f keyFormat) error {
	pub, err := x509.ParsePKIXPublicKey(k.DER)
	if err != nil {
		return fmt.Errorf("the daemon's escrow key of %s is not a PKIX public key: %w", k.Group, err)
	}
	if err := checkSuiteKey(k.Suite, pub); err != nil {
		return fmt.Errorf("the daemon's escrow key of %s: %w", k.Group, err)
	}
	lines := fmt.Sprintf("# group: %s\n# key version: %d\n# suite: %s\n", printable(k.Group), k.Version, printable(k.Suite))
	switch f {
	case formatPEM:
		if _, err := io.WriteString(out, lines); err != nil {
			return err
		}
		return pem.Encode(out, &pem.Block{Type: "PUBLIC KEY", Bytes: k.DER})
	case formatDER:
		if _, err := io.WriteString(meta, lines); err != nil {
			return err
		}
		_, err := out.Write(k.DER)
		return err
	case formatJWK:
		j, err := keyJWK(k, pub)
		if err != nil {
			return err
		}
		b, err := json.Marshal(j)
		if err != nil {
			return err
		}
		_, err = out.Write(append(b, '\n'))
		return err
	}
	_, err = parseKeyFormat(string(f))
	return err
}

// jwk is a public JSON Web Key (RFC 7517, 7518).
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg,omitempty"`
	// Suite is the escrowd suite, which says how to seal to the key. For
	// ecdh-p256 nothing standard says it: its KDF and key wrap are not
	// JOSE's ECDH-ES+A256KW, so the key carries no "alg".
	Suite string `json:"escrowd_suite"`
}

// keyJWK converts an escrow public key to a JWK: kid is GROUP/VERSION (the
// version follows the last slash), use is enc, alg is RSA-OAEP for
// rsa-oaep-sha1 and RSA-OAEP-256 for rsa-oaep-sha256 and absent otherwise.
func keyJWK(k escrowPublicKey, pub any) (*jwk, error) {
	j := &jwk{Kid: fmt.Sprintf("%s/%d", k.Group, k.Version), Use: "enc", Suite: k.Suite}
	b64 := base64.RawURLEncoding.EncodeToString
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		j.Kty, j.Crv = "EC", p.Curve.Params().Name
		if j.Crv != "P-256" && j.Crv != "P-384" && j.Crv != "P-521" {
			return nil, fmt.Errorf("no JWK for an EC key on curve %s", j.Crv)
		}
		// 0x04 || X || Y, each coordinate left-padded to the field size.
		pt, err := p.Bytes()
		if err != nil {
			return nil, err
		}
		n := (len(pt) - 1) / 2
		j.X, j.Y = b64(pt[1:1+n]), b64(pt[1+n:])
	case *rsa.PublicKey:
		j.Kty = "RSA"
		j.N, j.E = b64(p.N.Bytes()), b64(big.NewInt(int64(p.E)).Bytes())
	default:
		return nil, fmt.Errorf("no JWK for a %T", pub)
	}
	switch k.Suite {
	case suiteRSAOAEPSHA1:
		j.Alg = "RSA-OAEP"
	case suiteRSAOAEPSHA256:
		j.Alg = "RSA-OAEP-256"
	}
	return j, nil
}

// checkSuiteKey refuses a key whose type does not fit its (known) suite, so
// that no output labels an EC key RSA-OAEP or the reverse.
func checkSuiteKey(suite string, pub any) error {
	switch suite {
	case suiteECDHP256:
		if p, ok := pub.(*ecdsa.PublicKey); !ok || p.Curve.Params().Name != "P-256" {
			return fmt.Errorf("a %T, want EC P-256 for %s", pub, suite)
		}
	case suiteRSAOAEPSHA1, suiteRSAOAEPSHA256:
		if _, ok := pub.(*rsa.PublicKey); !ok {
			return fmt.Errorf("a %T, want RSA for %s", pub, suite)
		}
	}
	return nil
}

// printable returns s, quoted if it holds anything but printable ASCII
// without spaces, so that a metadata line stays one line.
func printable(s string) string {
	for _, r := range s {
		if r <= ' ' || r > '~' {
			return strconv.Quote(s)
		}
	}
	return s
}
