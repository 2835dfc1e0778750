package hsm_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
)

// classKeys makes one stored key of each class on a fresh token.
func classKeys(t *testing.T) (*hsm.HSM, map[hsm.KeyKind]hsm.WrappedKey) {
	t.Helper()
	ctx := context.Background()
	h := openToken(t, newToken(t), nil)
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, rsaKey, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	_, ecKey, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	return h, map[hsm.KeyKind]hsm.WrappedKey{hsm.KeyUnlock: unlock, hsm.KeyEscrow: rsaKey, hsm.KeyEscrowEC: ecKey}
}

// TestClassTemplates: the review found that the KEK's unwrap template left
// CKA_CLASS, CKA_KEY_TYPE, CKA_DERIVE and CKA_EXTRACTABLE to the caller, and
// one KEK served every key class: on a module with
// CKM_CONCATENATE_BASE_AND_KEY (or any derivation into an extractable
// key), a holder of the user PIN could unwrap a stored unlock key with
// CKA_DERIVE and derive it out. Now every class has its own KEK whose
// template fixes every capability: each attacker variant of the template
// is refused by the token (SoftHSM 2.6.1, measured), and only the exact
// template unwraps.
func TestClassTemplates(t *testing.T) {
	ctx := context.Background()
	h, keys := classKeys(t)
	variants := []string{"derive", "sign", "encrypt", "wrap", "not-wrap-with-trusted", "not-sensitive", "token",
		"modifiable", "no-modifiable", "aes-key", "other-mechanism", "no-mechanism-limit"}
	for kind, w := range keys {
		t.Run(kind.String(), func(t *testing.T) {
			if err := h.UnwrapVariantForTest(ctx, kind, w, "exact"); err != nil {
				t.Fatalf("the class template itself: %v", err)
			}
			for _, v := range variants {
				if (v == "encrypt" || v == "wrap") && kind != hsm.KeyUnlock {
					continue // not attributes of a private key (CKR_ATTRIBUTE_TYPE_INVALID)
				}
				err := h.UnwrapVariantForTest(ctx, kind, w, v)
				switch {
				case err == nil:
					t.Errorf("%s: the token unwrapped it", v)
				case strings.Contains(err.Error(), "setup"):
					t.Fatalf("%s: %v", v, err)
				case !errors.Is(err, hsm.ErrNotPermitted) || !strings.Contains(err.Error(), "CKR_TEMPLATE_INCONSISTENT"):
					t.Errorf("%s: %v, want CKR_TEMPLATE_INCONSISTENT", v, err)
				default:
					t.Logf("%s: refused: %v", v, err)
				}
			}
		})
	}
	// A stored key does not become a key of another class: another
	// class's KEK is another key (and another template).
	for kind, w := range keys {
		for other := range keys {
			if other == kind {
				continue
			}
			if err := h.CrossClassUnwrapForTest(ctx, kind, other, w); err == nil || strings.Contains(err.Error(), "setup") {
				t.Errorf("%v under the %v KEK: %v", kind, other, err)
			}
		}
	}
}

// TestAllowedMechanisms measures CKA_ALLOWED_MECHANISMS on SoftHSM 2.6.1:
// the KEK wraps with AES-KWP only; an unlock key does HMAC-SHA256 only; an
// RSA escrow key decrypts with OAEP only (no PKCS#1 v1.5 oracle, no raw
// RSA). Each refused with CKR_MECHANISM_INVALID.
func TestAllowedMechanisms(t *testing.T) {
	ctx := context.Background()
	h, keys := classKeys(t)
	for _, c := range []struct {
		attempt string
		w       hsm.WrappedKey
	}{{"kek-kw", keys[hsm.KeyUnlock]}, {"unlock-sha1", keys[hsm.KeyUnlock]}, {"rsa-pkcs1", keys[hsm.KeyEscrow]}, {"rsa-raw", keys[hsm.KeyEscrow]}} {
		err := h.MechanismForTest(ctx, c.w, c.attempt)
		if err == nil || strings.Contains(err.Error(), "setup") || !strings.Contains(err.Error(), "CKR_MECHANISM_INVALID") {
			t.Errorf("%s: %v, want CKR_MECHANISM_INVALID", c.attempt, err)
			continue
		}
		t.Logf("%s: refused: %v", c.attempt, err)
	}
}
