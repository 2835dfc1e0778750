package hsm_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"syscall"
	"testing"
	"time"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// processCPU is this process's CPU time: SoftHSM runs in it, so this is
// what one re-wrap costs the token and the daemon together, apart from
// who else had the cores.
func processCPU() time.Duration {
	var r syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

// BenchmarkRewrapCaches: one re-wrap to one ecdh-p256 member, per suite of
// the escrow slot, with nothing kept (every call unwraps the escrow key
// and opens the slot), with the escrow key kept (-hsm-hot-keys), and with
// the slot kept opened (-hsm-hot-slots): the same slot again and again,
// on one session. It reports the process's CPU per re-wrap, cpu-ms/op
// (go test -run XXX -bench RewrapCaches ./hsm). docs/HSM.md ("Hot
// slots") and docs/BENCHMARKS.md quote it.
func BenchmarkRewrapCaches(b *testing.B) {
	tok := newToken(b)
	ctx := context.Background()
	gen := openToken(b, tok, nil)
	dev, _ := ecdh.P256().GenerateKey(rand.Reader)
	devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
	tg := []hsm.Target{{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Context: &format.SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "m"}}}
	for _, suite := range []hsm.Suite{hsm.SuiteECDHP256, hsm.SuiteRSAOAEPSHA1} {
		pub, priv, err := gen.GenerateEscrowKey(ctx, suite)
		if err != nil {
			b.Fatal(err)
		}
		gdk := randBytes(b, 32)
		var src hsm.Source
		if suite == hsm.SuiteECDHP256 {
			src = escrowSource(b, pub, priv, "g", 1, gdk)
		} else {
			src = rsaEscrowSource(b, pub, priv, "g", 1, gdk)
		}
		for _, c := range []struct {
			name        string
			keys, slots int
		}{{"nothing kept", 0, 0}, {"escrow key kept", 64, 0}, {"slot kept", 64, 64}} {
			b.Run(string(suite)+"/"+c.name, func(b *testing.B) {
				h := openToken(b, tok, func(cfg *hsm.Config) {
					cfg.Sessions = 1
					cfg.HotKeys = c.keys
					cfg.HotSlots = c.slots
					cfg.HotKeyTTL = time.Hour
				})
				if _, err := h.RewrapSlot(ctx, src, tg); err != nil { // fills the caches
					b.Fatal(err)
				}
				c0 := processCPU()
				for b.Loop() {
					if _, err := h.RewrapSlot(ctx, src, tg); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(processCPU()-c0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
			})
		}
	}
}
