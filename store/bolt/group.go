package bolt

import (
	"errors"
	"sync"

	bbolt "go.etcd.io/bbolt"

	"github.com/escrowd/escrowd/store"
)

// Group commit for the hot write paths (ClaimCode, TakeRate: two writes
// per reveal; CreateGroup: one per provisioning). bbolt fsyncs every write transaction and runs one at a
// time, so without sharing, reveals were capped at one fsync each, whatever
// the number of callers. One writer goroutine runs every call that queued
// while the previous transaction committed in one transaction: a lone call
// waits for nobody (bbolt's own DB.Batch waits up to 10 ms for company),
// and under load one fsync serves many calls.
//
// A call's function may run more than once: if one function of a shared
// transaction fails, the transaction is rolled back, that call gets its
// error, and the others run again without it in a new transaction, in the
// same order. Functions must therefore set their results from the
// transaction alone, never accumulate across runs.

// maxShared bounds the calls of one shared transaction.
const maxShared = 256

type call struct {
	fn   func(*bbolt.Tx) error
	done chan error
}

type committer struct {
	calls chan *call
	quit  chan struct{}
	gone  chan struct{} // closed when the writer has returned
	once  sync.Once
}

func (s *Store) startCommitter() {
	s.c = &committer{calls: make(chan *call), quit: make(chan struct{}), gone: make(chan struct{})}
	go s.writer()
}

func (s *Store) stopCommitter() {
	s.c.once.Do(func() { close(s.c.quit) })
	<-s.c.gone
}

// shared runs fn in a write transaction shared with concurrent callers.
func (s *Store) shared(fn func(*bbolt.Tx) error) error {
	c := &call{fn: fn, done: make(chan error, 1)}
	select {
	case s.c.calls <- c:
	case <-s.c.quit:
		return store.ErrClosed
	}
	select {
	case err := <-c.done:
		return err
	case <-s.c.gone:
		select {
		case err := <-c.done:
			return err
		default:
			return store.ErrClosed
		}
	}
}

func (s *Store) writer() {
	defer close(s.c.gone)
	batch := make([]*call, 0, maxShared)
	for {
		select {
		case c := <-s.c.calls:
			batch = append(batch[:0], c)
		case <-s.c.quit:
			return
		}
	drain:
		for len(batch) < maxShared {
			select {
			case c := <-s.c.calls:
				batch = append(batch, c)
			default:
				break drain
			}
		}
		s.commitShared(batch)
	}
}

var errAbortShared = errors.New("bolt: a call of the shared transaction failed")

func (s *Store) commitShared(batch []*call) {
	for len(batch) > 0 {
		failed, ferr := -1, error(nil)
		err := s.update(func(tx *bbolt.Tx) error {
			for i, c := range batch {
				if err := c.fn(tx); err != nil {
					failed, ferr = i, err
					return errAbortShared
				}
			}
			return nil
		})
		if failed < 0 {
			for _, c := range batch {
				c.done <- err
			}
			return
		}
		batch[failed].done <- ferr
		batch = append(batch[:failed], batch[failed+1:]...)
	}
}
