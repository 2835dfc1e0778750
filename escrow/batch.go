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

// BatchRewrap re-wraps every item on its own: an item's failure is reported
// in its result and does not affect the others. Results are in item order.
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
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(batchWorkers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				it := items[i]
				r := &res[i]
				r.Ref = it.Ref
				if it.Recipient != nil {
					r.Slot, r.Used, r.Err = s.Rewrap(ctx, it.Group, it.EscrowSlot, *it.Recipient)
				} else {
					r.Slot, r.Used, r.Err = s.RewrapToEscrow(ctx, it.Group, it.EscrowSlot, it.EscrowVersion)
				}
			}
		}()
	}
	for i := range items {
		next <- i
	}
	close(next)
	wg.Wait()
	return res, nil
}
