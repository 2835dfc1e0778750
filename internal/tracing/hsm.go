package tracing

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// HSM returns h with a span around each of its calls, named hsm.METHOD:
// each is one use of the token (a key generation, an HMAC, a re-wrap or
// a rotation, with the session it waits for).
func HSM(h escrow.HSM, tp trace.TracerProvider) escrow.HSM {
	return tracedHSM{h: h, t: tp.Tracer(scope)}
}

type tracedHSM struct {
	h escrow.HSM
	t trace.Tracer
}

var _ escrow.HSM = tracedHSM{}

func (x tracedHSM) GenerateEscrowKey(ctx context.Context, suite hsm.Suite) ([]byte, hsm.WrappedKey, error) {
	ctx, span := x.t.Start(ctx, "hsm.GenerateEscrowKey")
	pub, priv, err := x.h.GenerateEscrowKey(ctx, suite)
	return pub, priv, end(span, err)
}

func (x tracedHSM) GenerateUnlockKey(ctx context.Context) (hsm.WrappedKey, error) {
	ctx, span := x.t.Start(ctx, "hsm.GenerateUnlockKey")
	k, err := x.h.GenerateUnlockKey(ctx)
	return k, end(span, err)
}

func (x tracedHSM) HMAC(ctx context.Context, key hsm.WrappedKey, msg []byte) ([]byte, error) {
	ctx, span := x.t.Start(ctx, "hsm.HMAC")
	mac, err := x.h.HMAC(ctx, key, msg)
	return mac, end(span, err)
}

func (x tracedHSM) RewrapSlot(ctx context.Context, src hsm.Source, targets []hsm.Target) ([]hsm.Sealed, error) {
	ctx, span := x.t.Start(ctx, "hsm.RewrapSlot")
	s, err := x.h.RewrapSlot(ctx, src, targets)
	return s, end(span, err)
}

func (x tracedHSM) Rotate(ctx context.Context, src hsm.Source, chain *format.SlotContext, targets []hsm.Target) (hsm.Sealed, []hsm.Sealed, error) {
	ctx, span := x.t.Start(ctx, "hsm.Rotate")
	c, s, err := x.h.Rotate(ctx, src, chain, targets)
	return c, s, end(span, err)
}
