package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type testKey struct {
	name  string
	suite string
	pub   crypto.PublicKey
}

// testKeys: a P-256 key, a P-256 key with a coordinate below 2^248 (so
// that its JWK coordinate needs left padding), RSA-2048 and RSA-3072.
func testKeys(t *testing.T) []testKey {
	t.Helper()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var short *ecdsa.PrivateKey
	for i := 0; short == nil; i++ {
		if i == 10000 {
			t.Fatal("no P-256 key with a short coordinate in 10000 tries")
		}
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if pt, _ := k.PublicKey.Bytes(); pt[1] == 0 || pt[33] == 0 {
			short = k
		}
	}
	var keys []testKey
	keys = append(keys, testKey{"P-256", suiteECDHP256, &ec.PublicKey}, testKey{"P-256 short coordinate", suiteECDHP256, &short.PublicKey})
	for _, c := range []struct {
		bits  int
		suite string
	}{{2048, suiteRSAOAEPSHA1}, {3072, suiteRSAOAEPSHA256}} {
		k, err := rsa.GenerateKey(rand.Reader, c.bits)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, testKey{"RSA-" + big.NewInt(int64(c.bits)).String(), c.suite, &k.PublicKey})
	}
	return keys
}

// tool finds a program the test needs: missing, the test fails.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is required to check that the output reads outside Go: %v", name, err)
	}
	return p
}

// nodeReads has Node's crypto.createPublicKey read a PEM, a DER and a JWK
// file and returns, for each, the key it read as base64 PKIX DER.
const nodeReads = `
const c = require("crypto"), fs = require("fs");
const [pemF, derF, jwkF] = process.argv.slice(1);
const keys = [
  c.createPublicKey(fs.readFileSync(pemF, "utf8")),
  c.createPublicKey({key: fs.readFileSync(derF), format: "der", type: "spki"}),
  c.createPublicKey({key: JSON.parse(fs.readFileSync(jwkF, "utf8")), format: "jwk"}),
];
for (const k of keys) console.log(k.export({type: "spki", format: "der"}).toString("base64"));
`

func TestWriteEscrowKey(t *testing.T) {
	openssl, node := tool(t, "openssl"), tool(t, "node")
	for _, tk := range testKeys(t) {
		t.Run(tk.name, func(t *testing.T) {
			der, err := x509.MarshalPKIXPublicKey(tk.pub)
			if err != nil {
				t.Fatal(err)
			}
			k := escrowPublicKey{Group: "fam/ily-7", Version: 3, Suite: tk.suite, DER: der}
			wantLines := "# group: fam/ily-7\n# key version: 3\n# suite: " + tk.suite + "\n"
			dir := t.TempDir()
			outputs := map[keyFormat][]byte{}
			for _, f := range keyFormats {
				var out, meta bytes.Buffer
				if err := writeEscrowKey(&out, &meta, k, f); err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				wantMeta := ""
				if f == formatDER {
					wantMeta = wantLines
				}
				if meta.String() != wantMeta {
					t.Fatalf("%s: metadata output %q, want %q", f, meta.String(), wantMeta)
				}
				outputs[f] = out.Bytes()
				if err := os.WriteFile(filepath.Join(dir, "key."+string(f)), out.Bytes(), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			// PEM: the "# " lines, then one headerless PUBLIC KEY block.
			p := outputs[formatPEM]
			before, _, ok := bytes.Cut(p, []byte("-----BEGIN"))
			if !ok || string(before) != wantLines {
				t.Fatalf("pem: text before the block %q, want %q", before, wantLines)
			}
			block, rest := pem.Decode(p)
			if block == nil || block.Type != "PUBLIC KEY" || len(block.Headers) != 0 || len(rest) != 0 {
				t.Fatalf("pem: not one headerless PUBLIC KEY block:\n%s", p)
			}
			if got, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil || !bytes.Equal(block.Bytes, der) || !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(tk.pub) {
				t.Fatalf("pem: the block does not hold the key: %v", err)
			}
			pemFile := filepath.Join(dir, "key.pem")
			if out, err := exec.Command(openssl, "pkey", "-pubin", "-noout", "-in", pemFile).CombinedOutput(); err != nil {
				t.Fatalf("openssl pkey -pubin -noout refuses the PEM: %v\n%s\n%s", err, out, p)
			}
			if out, err := exec.Command(openssl, "pkey", "-pubin", "-in", pemFile, "-outform", "DER").Output(); err != nil || !bytes.Equal(out, der) {
				t.Fatalf("openssl reads another key from the PEM: %v", err)
			}

			// DER: the bytes alone.
			if !bytes.Equal(outputs[formatDER], der) {
				t.Fatalf("der: %x, want %x", outputs[formatDER], der)
			}

			// JWK: one object with exactly the expected members.
			j := outputs[formatJWK]
			if bytes.Count(j, []byte("\n")) != 1 || j[len(j)-1] != '\n' {
				t.Fatalf("jwk: not one line: %q", j)
			}
			var m map[string]string
			dec := json.NewDecoder(bytes.NewReader(j))
			if err := dec.Decode(&m); err != nil || dec.More() {
				t.Fatalf("jwk: not one JSON object of strings: %v\n%s", err, j)
			}
			want := map[string]string{"kid": "fam/ily-7/3", "use": "enc", "escrowd_suite": tk.suite}
			switch tk.suite {
			case suiteRSAOAEPSHA1:
				want["alg"] = "RSA-OAEP"
			case suiteRSAOAEPSHA256:
				want["alg"] = "RSA-OAEP-256"
			}
			for _, n := range []string{"x", "y", "n", "e"} {
				if _, ok := m[n]; ok {
					want[n] = m[n]
					if strings.ContainsAny(m[n], "=+/") {
						t.Fatalf("jwk: %s is not unpadded base64url: %q", n, m[n])
					}
				}
			}
			b64 := func(s string) []byte {
				b, err := base64.RawURLEncoding.Strict().DecodeString(s)
				if err != nil {
					t.Fatalf("jwk: %q: %v", s, err)
				}
				return b
			}
			var back crypto.PublicKey
			switch pub := tk.pub.(type) {
			case *ecdsa.PublicKey:
				want["kty"], want["crv"] = "EC", "P-256"
				x, y := b64(m["x"]), b64(m["y"])
				if len(x) != 32 || len(y) != 32 {
					t.Fatalf("jwk: coordinates of %d and %d bytes, want 32", len(x), len(y))
				}
				back, err = ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
				if err != nil {
					t.Fatal(err)
				}
			case *rsa.PublicKey:
				want["kty"] = "RSA"
				n, e := b64(m["n"]), b64(m["e"])
				if n[0] == 0 || e[0] == 0 || len(n) != pub.Size() {
					t.Fatalf("jwk: n or e has a leading zero, or n is %d bytes", len(n))
				}
				back = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			}
			if !reflect.DeepEqual(m, want) {
				t.Fatalf("jwk: %v\nwant %v", m, want)
			}
			if !back.(interface{ Equal(crypto.PublicKey) bool }).Equal(tk.pub) {
				t.Fatal("jwk: does not round-trip to the key")
			}

			// Node reads all three as the same key.
			out, err := exec.Command(node, "-e", nodeReads, pemFile, filepath.Join(dir, "key.der"), filepath.Join(dir, "key.jwk")).CombinedOutput()
			if err != nil {
				t.Fatalf("node refuses an output: %v\n%s", err, out)
			}
			b := base64.StdEncoding.EncodeToString(der)
			if got := strings.Fields(string(out)); !reflect.DeepEqual(got, []string{b, b, b}) {
				t.Fatalf("node read pem, der, jwk as\n%s\nwant %s three times", out, b)
			}
		})
	}
}

// TestHeadersRefused is the control: the PEM escrowctl printed before,
// with headers inside the block, is refused by both OpenSSL and Node, so
// that their acceptance above means something.
func TestHeadersRefused(t *testing.T) {
	openssl, node := tool(t, "openssl"), tool(t, "node")
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	f := filepath.Join(t.TempDir(), "old.pem")
	old := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der,
		Headers: map[string]string{"Group": "g", "Version": "1", "Suite": suiteECDHP256}})
	if err := os.WriteFile(f, old, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(openssl, "pkey", "-pubin", "-noout", "-in", f).CombinedOutput(); err == nil {
		t.Fatalf("openssl accepts a PEM with headers:\n%s", out)
	}
	script := `require("crypto").createPublicKey(require("fs").readFileSync(process.argv[1], "utf8"))`
	if out, err := exec.Command(node, "-e", script, f).CombinedOutput(); err == nil {
		t.Fatalf("node accepts a PEM with headers:\n%s", out)
	}
}

func TestWriteEscrowKeyRefuses(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384DER, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	tests := []struct {
		name string
		k    escrowPublicKey
		want string
	}{
		{"not DER", escrowPublicKey{Group: "g", Version: 1, Suite: suiteECDHP256, DER: []byte("nope")}, "not a PKIX public key"},
		{"EC labelled RSA", escrowPublicKey{Group: "g", Version: 1, Suite: suiteRSAOAEPSHA256, DER: ecDER}, "want RSA for rsa-oaep-sha256"},
		{"P-384 labelled ecdh-p256", escrowPublicKey{Group: "g", Version: 1, Suite: suiteECDHP256, DER: p384DER}, "want EC P-256"},
	}
	for _, tt := range tests {
		for _, f := range keyFormats {
			var out, meta bytes.Buffer
			err := writeEscrowKey(&out, &meta, tt.k, f)
			if err == nil || !strings.Contains(err.Error(), tt.want) || out.Len() != 0 || meta.Len() != 0 {
				t.Errorf("%s, %s: %v (wrote %q, %q), want an error saying %q and no output", tt.name, f, err, out.String(), meta.String(), tt.want)
			}
		}
	}
}

// TestPrintableMetadata: a group id with a line break cannot start a line
// of its own before the block.
func TestPrintableMetadata(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	var out bytes.Buffer
	k := escrowPublicKey{Group: "g\n-----BEGIN PUBLIC KEY-----", Version: 1, Suite: suiteECDHP256, DER: der}
	if err := writeEscrowKey(&out, &out, k, formatPEM); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), `# group: "g\n-----BEGIN PUBLIC KEY-----"`+"\n") || strings.Count(out.String(), "\n-----BEGIN") != 1 {
		t.Fatalf("metadata broke out of its line:\n%s", out.String())
	}
}

func TestFormatFlag(t *testing.T) {
	for _, v := range []string{"pem", "der", "jwk"} {
		if f, err := parseKeyFormat(v); err != nil || string(f) != v {
			t.Errorf("parseKeyFormat(%q) = %q, %v", v, f, err)
		}
	}
	for _, v := range []string{"", "PEM", "xml", "jwks"} {
		if _, err := parseKeyFormat(v); !errors.Is(err, errUsage) {
			t.Errorf("parseKeyFormat(%q): %v, want a usage error", v, err)
		}
	}
	// The command refuses the value before it needs a certificate or a
	// daemon, and escrowctl exits 2.
	var out bytes.Buffer
	err := run([]string{"group", "key", "-group", "g", "-format", "xml", "-addr", "127.0.0.1:1"}, &out)
	if !errors.Is(err, errUsage) || exitCode(err) != 2 || out.Len() != 0 {
		t.Fatalf("group key -format xml: %v (exit %d), want a usage error, exit 2", err, exitCode(err))
	}
	if msg := err.Error(); !strings.Contains(msg, `"xml"`) || !strings.Contains(msg, "pem, der, jwk") {
		t.Fatalf("the error does not name the accepted values: %s", msg)
	}
	if c := exitCode(errors.New("Unavailable: connection refused")); c != 1 {
		t.Fatalf("exit %d for a failed call, want 1", c)
	}
}
