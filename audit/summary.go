package audit

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// SummaryOperation is the operation of a summary record: the refusals
// that found CommitRefusal's lane full, counted instead of recorded one by
// one. Its caller is "escrowd", its outcome "denied", and its details are
//
//	refusals:N                      how many it counts
//	first:TIME last:TIME            when the first and the last arrived (RFC 3339)
//	count:K caller:C operation:O code:X
//	                                one line per caller, operation and code,
//	                                most first, at most summaryKeys lines; the
//	                                rest on one line "count:K others"
const SummaryOperation = "escrowd/refusal-summary"

// RefusalObserver is an Observer that also learns of each refusal counted
// into a summary record instead of being recorded alone.
type RefusalObserver interface {
	ObserveRefusalSummarised()
}

// summaryKeys bounds the distinct caller, operation and code lines of one
// summary record, so that the record stays small whatever the flood.
const summaryKeys = 32

// refusalSummary counts refusals between two writes.
type refusalSummary struct {
	mu          sync.Mutex
	total       int
	first, last time.Time
	by          map[string]int
	others      int
}

func (s *refusalSummary) add(r *Record, at time.Time) {
	key := fmt.Sprintf("caller:%s operation:%s code:%s", r.Caller, r.Operation, r.Code)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count(key, 1, at, at)
}

func (s *refusalSummary) count(key string, n int, first, last time.Time) {
	if s.by == nil {
		s.by = map[string]int{}
	}
	if s.total == 0 || first.Before(s.first) {
		s.first = first
	}
	if last.After(s.last) {
		s.last = last
	}
	s.total += n
	if _, ok := s.by[key]; ok || len(s.by) < summaryKeys {
		s.by[key] += n
	} else {
		s.others += n
	}
}

// take returns the summary record of what was counted, and the counts
// (for restore), and starts afresh; nil if nothing was counted.
func (s *refusalSummary) take() (*Record, *refusalSummary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total == 0 {
		return nil, nil
	}
	type line struct {
		key string
		n   int
	}
	lines := make([]line, 0, len(s.by))
	for k, n := range s.by {
		lines = append(lines, line{k, n})
	}
	sort.Slice(lines, func(i, j int) bool {
		if lines[i].n != lines[j].n {
			return lines[i].n > lines[j].n
		}
		return lines[i].key < lines[j].key
	})
	now := time.Now()
	r := &Record{ID: NewID(now), Time: now.UTC(), Caller: "escrowd", Operation: SummaryOperation,
		Outcome: OutcomeDenied,
		Reason:  fmt.Sprintf("%d refusals found the audit trail's refusal lane full: they are counted here, not recorded one by one", s.total),
		Detail: []string{fmt.Sprintf("refusals:%d", s.total),
			fmt.Sprintf("first:%s last:%s", s.first.UTC().Format(time.RFC3339Nano), s.last.UTC().Format(time.RFC3339Nano))}}
	for _, l := range lines {
		r.Detail = append(r.Detail, fmt.Sprintf("count:%d %s", l.n, l.key))
	}
	if s.others > 0 {
		r.Detail = append(r.Detail, fmt.Sprintf("count:%d others", s.others))
	}
	counts := &refusalSummary{total: s.total, first: s.first, last: s.last, by: s.by, others: s.others}
	s.total, s.by, s.others = 0, nil, 0
	return r, counts
}

// restore counts again what a summary held, after its write failed.
func (s *refusalSummary) restore(old *refusalSummary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, n := range old.by {
		s.count(k, n, old.first, old.last)
	}
	if old.others > 0 {
		if s.total == 0 || old.first.Before(s.first) {
			s.first = old.first
		}
		if old.last.After(s.last) {
			s.last = old.last
		}
		s.others += old.others
		s.total += old.others
	}
}
