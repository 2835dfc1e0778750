package escrow

import (
	"context"
	"fmt"
	"sync"

	"github.com/escrowd/escrowd/escrow/bundle"
)

// MaxBatch is the most items one BatchRewrap takes. A batch over it is
// refused whole with ErrInvalid.
const MaxBatch = 256

// batchWorkers runs items concurrently: only RSA scales past one goroutine
// on SoftHSM (~1.8× at 2), and the HSM's session pool bounds the rest.
const batchWorkers = 4

// BatchItem is one re-wrap of a batch: the GDK of EscrowSlot to either a
// member or device (Recipient) or, when Recipient is nil, to the group's
// escrow key version EscrowVersion (0: the newest).
type BatchItem struct {
	Ref           string // the caller's reference, echoed in the result
	Group         string
	EscrowSlot    []byte
	Recipient     *Recipient
	EscrowVersion uint32
}

// BatchResult is one item's outcome: Slot or Err.
type BatchResult struct {
	Ref  string
	Slot []byte
	Used Used
	Err  error
}

// BatchRewrap re-wraps every item: an item's failure is reported in its
// result and does not affect the others. Results are in item order. Items
// that re-wrap one escrow slot to members or devices share one HSM call.
func (s *Service) BatchRewrap(ctx context.Context, items []BatchItem) ([]BatchResult, error) {
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: items: an empty batch", ErrInvalid)
	}
	if len(items) > MaxBatch {
		return nil, fmt.Errorf("%w: items: %d items, more than %d: split the batch", ErrInvalid, len(items), MaxBatch)
	}
	for i, it := range items {
		if len(it.Ref) > bundle.MaxIDLength {
			return nil, fmt.Errorf("%w: items[%d].ref is %d bytes, more than %d", ErrInvalid, i, len(it.Ref), bundle.MaxIDLength)
		}
	}
	res := make([]BatchResult, len(items))
	for i, it := range items {
		res[i].Ref = it.Ref
	}
	// Items that re-wrap one escrow slot to members or devices form a run,
	// done in one HSM call: the slot is opened once and sealed to each
	// recipient (a join burst: 21 + 5 per extra recipient PKCS#11 calls
	// instead of 21 each). Every other item is a run of its own.
	var runs [][]int
	bySlot := map[string]int{}
	for i, it := range items {
		if it.Recipient != nil {
			k := it.Group + "\x00" + string(it.EscrowSlot)
			if r, ok := bySlot[k]; ok {
				runs[r] = append(runs[r], i)
				continue
			}
			bySlot[k] = len(runs)
		}
		runs = append(runs, []int{i})
	}
	next := make(chan []int)
	var wg sync.WaitGroup
	for range min(batchWorkers, len(runs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for run := range next {
				s.batchRun(ctx, items, res, run)
			}
		}()
	}
	for _, run := range runs {
		next <- run
	}
	close(next)
	wg.Wait()
	return res, nil
}

// batchRun does the items of run (indices into items and res): one item
// on its own; several re-wraps of one escrow slot in one HSM call, or,
// should that call fail, each on its own, so that every item gets its own
// outcome.
func (s *Service) batchRun(ctx context.Context, items []BatchItem, res []BatchResult, run []int) {
	one := func(i int) {
		it, r := items[i], &res[i]
		if it.Recipient != nil {
			r.Slot, r.Used, r.Err = s.Rewrap(ctx, it.Group, it.EscrowSlot, *it.Recipient)
		} else {
			r.Slot, r.Used, r.Err = s.RewrapToEscrow(ctx, it.Group, it.EscrowSlot, it.EscrowVersion)
		}
	}
	if len(run) > 1 {
		rs := make([]Recipient, len(run))
		for k, i := range run {
			rs[k] = *items[i].Recipient
		}
		slots, used, err := s.RewrapMany(ctx, items[run[0]].Group, items[run[0]].EscrowSlot, rs)
		if err == nil {
			for k, i := range run {
				res[i].Slot, res[i].Used = slots[k], used
			}
			return
		}
	}
	for _, i := range run {
		one(i)
	}
}
