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

// BenchmarkRewrapOwnKeys: one re-wrap of a random group's ecdh-p256 slot
// when every group has its own escrow key (as in a deployment), so that a
// kept key is almost never found again: with nothing kept, and with up to
// 4 and 64 keys kept on the session (misses, each pushing the least
// recently used key out). "one shared key" re-wraps a single group's slot
// with nothing kept: the raw ceiling's sequence. It reports cpu-ms/op as
// BenchmarkRewrapCaches does (go test -run XXX -bench RewrapOwnKeys ./hsm).
func BenchmarkRewrapOwnKeys(b *testing.B) {
	const groups = 256
	tok := newToken(b)
	ctx := context.Background()
	gen := openToken(b, tok, nil)
	dev, _ := ecdh.P256().GenerateKey(rand.Reader)
	devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
	tg := []hsm.Target{{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Context: &format.SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "m"}}}
	srcs := make([]hsm.Source, groups)
	for i := range srcs {
		pub, priv, err := gen.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
		if err != nil {
			b.Fatal(err)
		}
		srcs[i] = escrowSource(b, pub, priv, "g", 1, randBytes(b, 32))
	}
	for _, c := range []struct {
		name   string
		keys   int
		shared bool
	}{{"one shared key", 0, true}, {"nothing kept", 0, false}, {"4 kept", 4, false}, {"64 kept", 64, false}} {
		b.Run(c.name, func(b *testing.B) {
			h := openToken(b, tok, func(cfg *hsm.Config) {
				cfg.Sessions = 1
				cfg.HotKeys = c.keys
				cfg.HotKeyTTL = time.Hour
			})
			pick := func(i int) hsm.Source {
				if c.shared {
					return srcs[0]
				}
				return srcs[(i*97)%groups] // every group before any again
			}
			for i := range 2 * groups { // fills the cache
				if _, err := h.RewrapSlot(ctx, pick(i), tg); err != nil {
					b.Fatal(err)
				}
			}
			c0 := processCPU()
			i := 0
			for b.Loop() {
				if _, err := h.RewrapSlot(ctx, pick(i), tg); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.ReportMetric(float64(processCPU()-c0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
		})
	}
}
