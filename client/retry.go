package client

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// retryable reports whether an idempotent call that failed with err may be
// sent again: the daemon was unavailable (draining, Vault or the store
// unreachable, the connection lost) or a concurrent change aborted it.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Aborted:
		return true
	}
	return false
}

// invoke sends one call through fn. An idempotent call is retried while
// retryable, up to MaxAttempts, within the context's deadline or, if it
// has none, RetryDeadline. Whatever the outcome, the request id of the
// last try goes to the RequestID option.
func (c *Client) invoke(ctx context.Context, method string, idempotent bool, opts []CallOption, fn func(context.Context, ...grpc.CallOption) error) error {
	var o callOptions
	for _, f := range opts {
		f(&o)
	}
	attempts := 1
	if idempotent {
		attempts = c.cfg.MaxAttempts
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.cfg.RetryDeadline)
			defer cancel()
		}
	}
	var (
		err, prev error
		hdr, phdr metadata.MD
		tried     int
	)
	for tried = 1; ; tried++ {
		hdr = nil
		err = fn(ctx, grpc.Header(&hdr))
		if status.Code(err) == codes.DeadlineExceeded && ctx.Err() != nil && prev != nil {
			// Time ran out during a retry: the daemon's last answer
			// says more than the deadline.
			err, hdr = prev, phdr
			break
		}
		if err == nil || tried >= attempts || !retryable(err) {
			break
		}
		prev, phdr = err, hdr
		d := c.backoff(tried, fromStatus(method, err, requestIDOf(hdr)))
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
			break // no time for another try: the last answer stands
		}
		if c.sleep(ctx, d) != nil {
			break
		}
	}
	if o.attempts != nil {
		*o.attempts = tried
	}
	if o.requestID != nil {
		*o.requestID = requestIDOf(hdr)
	}
	return fromStatus(method, err, requestIDOf(hdr))
}

// backoff is the wait before retry n (1, 2, …): full jitter over an
// exponential ceiling, or the daemon's RetryInfo if that asks for longer.
func (c *Client) backoff(n int, err error) time.Duration {
	ceil := c.cfg.BaseDelay << min(n-1, 20)
	if ceil > c.cfg.MaxDelay || ceil <= 0 {
		ceil = c.cfg.MaxDelay
	}
	d := time.Duration(rand.Int64N(int64(ceil)) + 1)
	if e, ok := err.(*Error); ok && e.RetryAfter > d {
		d = e.RetryAfter
	}
	return d
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
