package daemon

import (
	"context"
	"sync"
	"time"
)

// refusalPacer answers the refusals of one caller no faster than a rate
// (burst: the same number): past it, each refusal waits its turn before
// it is recorded and answered, for at most maxRefusalWait. A caller that
// is refused again and again, misconfigured or probing, then costs
// escrowd, its log and the audit trail's refusal lane little, however
// many requests it sends at once; callers that are not refused are never
// paced. Callers are told apart by their identity (a verified
// certificate: the API listener admits no other).
type refusalPacer struct {
	rate float64 // refusals a second per caller; 0: no pacing
	mu   sync.Mutex
	by   map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

// refusalCallers bounds the callers the pacer tracks at once; past it, it
// starts afresh (a caller then gets its burst again).
const refusalCallers = 4096

// maxRefusalWait bounds how long one refusal waits for its turn.
const maxRefusalWait = 10 * time.Second

// wait holds the refusal of caller until its turn, ctx's end or
// maxRefusalWait, whichever comes first.
func (p *refusalPacer) wait(ctx context.Context, caller string, now time.Time) {
	if p == nil || p.rate <= 0 {
		return
	}
	d := p.reserve(caller, now)
	if d <= 0 {
		return
	}
	t := time.NewTimer(min(d, maxRefusalWait))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// reserve takes a turn for caller and says how long until it comes.
func (p *refusalPacer) reserve(caller string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.by == nil || len(p.by) >= refusalCallers {
		p.by = make(map[string]*bucket)
	}
	b := p.by[caller]
	if b == nil {
		b = &bucket{tokens: p.rate, last: now}
		p.by[caller] = b
	}
	b.tokens = min(p.rate, b.tokens+now.Sub(b.last).Seconds()*p.rate)
	b.last = now
	// The debt is bounded: a caller that stops is back to its burst
	// within maxRefusalWait.
	b.tokens = max(b.tokens-1, -p.rate*maxRefusalWait.Seconds())
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / p.rate * float64(time.Second))
}
