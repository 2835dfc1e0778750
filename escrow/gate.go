package escrow

import "context"

// A gate is what an operation must pass before its first change of state:
// the daemon's write-ahead audit gives one that returns once the
// operation's intent record is committed, and an error (wrapping
// ErrUnavailable) when it cannot be. Work that changes nothing (reading
// the store, deriving in the HSM) runs before the gate, alongside the
// audit write, so a request costs about the longer of the two rather than
// their sum.
type gateKey struct{}

// WithGate returns ctx carrying gate, which RevealCode calls after
// deriving the code and before claiming it: a reveal whose intent cannot
// be recorded claims, and so burns, nothing.
func WithGate(ctx context.Context, gate func(context.Context) error) context.Context {
	return context.WithValue(ctx, gateKey{}, gate)
}

// PassGate calls the gate in ctx, if any. Service calls it before its
// first change of state in the operations WithGate names.
func PassGate(ctx context.Context) error {
	if g, ok := ctx.Value(gateKey{}).(func(context.Context) error); ok {
		return g(ctx)
	}
	return nil
}
