// Package jobs runs escrowd's long operations over every group — master
// KEK rotation and bulk group-key rotation — so that they survive a crash
// of the daemon at any point and run on one replica at a time.
//
// A job scans the groups in id order, a batch at a time. Each batch's
// changed groups and the job's checkpoint (cursor, counts) are committed in
// one store transaction (store.CommitBatch), so a restarted job resumes
// after the last committed batch and never applies a batch twice. Each
// group's new wrapped keys replace the old ones atomically, only if the
// group did not change meanwhile (its Rev); the old master KEK stays on
// the token until an operator destroys it, which escrowd refuses while any
// stored key still needs it: no group is ever left without a working key.
//
// A job runs on the replica holding its lease (store.Job.Owner until
// LeaseUntil), renewed by a heartbeat; a replica that dies stops renewing
// and another takes the job over once the lease has expired. A replica
// that lost its lease cannot commit (ErrLeaseHeld): it stops.
//
// A pass that changed nothing ends the job: a KEK rotation makes a second,
// checking pass, which also catches groups provisioned under the old KEK by
// a replica that had not switched yet.
package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store"
)

// Job kinds.
const (
	// KindKEKRotation re-wraps every stored key under master KEK version
	// Params["to"].
	KindKEKRotation = "kek-rotation"
	// KindGroupRotation adds a new version of every group's escrow key
	// (Params["escrow"] == "true"), unlock key (Params["unlock"]) or both.
	KindGroupRotation = "group-rotation"
)

// Sentinel errors.
var (
	ErrInvalid = errors.New("invalid job")
	// ErrRunning: a job of that kind is running already.
	ErrRunning = errors.New("a job of this kind is running")
)

// HSM is what jobs need of the HSM.
type HSM interface {
	escrow.KeyVersions
	UseKEK(ctx context.Context, v uint32) error
	KEKVersions(ctx context.Context) ([]uint32, error)
	KEKStates(ctx context.Context) ([]hsm.KEKState, error)
	DestroyKEK(ctx context.Context, v uint32) error
	CurrentKEK() uint32
}

// Config tunes a Runner; zero values take the defaults.
type Config struct {
	// Owner names this replica in leases; default host-pid-random.
	Owner string
	// Lease is how long a lease lasts without a heartbeat (default 15s);
	// heartbeats come every Lease/3.
	Lease time.Duration
	// Poll is how often the runner looks for jobs to run (default 2s).
	Poll time.Duration
	// Batch is the number of groups per checkpoint (default 100).
	Batch int
	// Workers run a batch's HSM work concurrently (default 2).
	Workers int
	Logger  *zap.Logger
}

// Runner creates jobs and runs those it holds the lease of.
type Runner struct {
	store store.Store
	svc   *escrow.Service
	hsm   HSM
	cfg   Config
	log   *zap.Logger
	now   func() time.Time
}

// New returns a runner.
func New(st store.Store, svc *escrow.Service, h HSM, cfg Config) *Runner {
	if cfg.Owner == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Owner = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 15 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Runner{store: st, svc: svc, hsm: h, cfg: cfg, log: cfg.Logger, now: time.Now}
}

// Owner is this runner's lease owner name.
func (r *Runner) Owner() string { return r.cfg.Owner }

// Start creates a job; it runs on whichever replica leases it first.
func (r *Runner) Start(ctx context.Context, kind string, params map[string]string) (store.Job, error) {
	switch kind {
	case KindKEKRotation:
		to, err := strconv.ParseUint(params["to"], 10, 32)
		if err != nil || to == 0 {
			return store.Job{}, fmt.Errorf("%w: %s needs a KEK version to rotate to", ErrInvalid, kind)
		}
		states, err := r.hsm.KEKStates(ctx)
		if err != nil {
			return store.Job{}, fmt.Errorf("%w: HSM: %w", escrow.ErrUnavailable, err)
		}
		var have []uint32
		var st *hsm.KEKState
		for i := range states {
			if states[i].Usable {
				have = append(have, states[i].Version)
			}
			if states[i].Version == uint32(to) {
				st = &states[i]
			}
		}
		switch {
		case st == nil:
			return store.Job{}, fmt.Errorf("%w: master KEK version %d is not on the token (usable: %v): run `escrowctl hsm init -kek-version %d` first", escrow.ErrPrecondition, to, have, to)
		case !st.Usable:
			return store.Job{}, fmt.Errorf("%w: master KEK version %d is on the token but refused: %s", escrow.ErrPrecondition, to, st.Problem)
		}
		params = map[string]string{"to": strconv.FormatUint(to, 10)}
	case KindGroupRotation:
		e, u := params["escrow"] == "true", params["unlock"] == "true"
		if !e && !u {
			return store.Job{}, fmt.Errorf("%w: %s needs escrow=true, unlock=true or both", ErrInvalid, kind)
		}
		params = map[string]string{"escrow": strconv.FormatBool(e), "unlock": strconv.FormatBool(u)}
	default:
		return store.Job{}, fmt.Errorf("%w: unknown kind %q (want %s or %s)", ErrInvalid, kind, KindKEKRotation, KindGroupRotation)
	}
	all, err := r.store.Jobs(ctx)
	if err != nil {
		return store.Job{}, err
	}
	for _, j := range all {
		if j.Kind == kind && j.State == store.JobRunning {
			return store.Job{}, fmt.Errorf("%w: job %s", ErrRunning, j.ID)
		}
	}
	total, err := r.store.CountGroups(ctx)
	if err != nil {
		return store.Job{}, err
	}
	now := r.now().UTC()
	var b [4]byte
	_, _ = rand.Read(b[:])
	j := store.Job{
		ID:   fmt.Sprintf("%s-%s-%s", kind, now.Format("20060102T150405Z"), hex.EncodeToString(b[:])),
		Kind: kind, Params: params, State: store.JobRunning, Pass: 1, Total: total, Created: now, Updated: now,
	}
	if err := r.store.CreateJob(ctx, j); err != nil {
		return store.Job{}, err
	}
	return j, nil
}

// Cancel stops a running job at its next checkpoint.
func (r *Runner) Cancel(ctx context.Context, id string) (store.Job, error) {
	return r.store.UpdateJob(ctx, id, func(j *store.Job) error {
		if j.State != store.JobRunning {
			return fmt.Errorf("%w: job %s is %s", ErrInvalid, j.ID, j.State)
		}
		j.State, j.Updated = store.JobCanceled, r.now().UTC()
		return nil
	})
}

// Run looks for running jobs every Poll and runs those whose lease it can
// take, until ctx ends.
func (r *Runner) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Poll)
	defer t.Stop()
	for {
		r.RunOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunOnce takes and runs every job it can lease, each until it ends or
// the lease is lost.
func (r *Runner) RunOnce(ctx context.Context) {
	all, err := r.store.Jobs(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("jobs: cannot list jobs", zap.Error(err))
		}
		return
	}
	if err := r.followKEK(ctx, all); err != nil && ctx.Err() == nil {
		r.log.Error("jobs: cannot switch to the master KEK the operator chose", zap.Error(err))
	}
	for _, j := range all {
		if j.State != store.JobRunning || ctx.Err() != nil {
			continue
		}
		j, err := r.lease(ctx, j.ID)
		if err != nil {
			if !errors.Is(err, store.ErrLeaseHeld) && ctx.Err() == nil {
				r.log.Warn("jobs: cannot lease", zap.String("job", j.ID), zap.Error(err))
			}
			continue
		}
		r.run(ctx, j)
	}
}

// kekTarget is the master KEK version the operator chose for new keys:
// the target of the newest kek-rotation job, whatever its state (a
// failed or canceled job is started again, not undone by a new object on
// the token). 0 when no KEK rotation was ever started.
func kekTarget(all []store.Job) uint32 {
	var newest store.Job
	for _, j := range all {
		if j.Kind == KindKEKRotation && (newest.ID == "" || j.Created.After(newest.Created)) {
			newest = j
		}
	}
	if newest.ID == "" {
		return 0
	}
	to, err := strconv.ParseUint(newest.Params["to"], 10, 32)
	if err != nil {
		return 0
	}
	return uint32(to)
}

// followKEK makes this replica wrap new keys under the master KEK the
// operator chose (kekTarget), so that every replica switches within a
// poll of a kek-rotation job's start. A KEK merely appearing on the token
// switches nothing: before any rotation, new keys go under the KEK
// hsm.Open chose (the oldest usable on the token).
func (r *Runner) followKEK(ctx context.Context, all []store.Job) error {
	v := kekTarget(all)
	if v == 0 || v == r.hsm.CurrentKEK() {
		return nil
	}
	if err := r.hsm.UseKEK(ctx, v); err != nil {
		return fmt.Errorf("master KEK version %d (the target of the last kek-rotation job): %w", v, err)
	}
	r.log.Info("jobs: new keys now go under master KEK version", zap.Uint32("kek_version", v))
	return nil
}

// FollowKEK is followKEK at start: escrowd calls it before serving, and
// refuses to start if the KEK the operator chose cannot be used.
func (r *Runner) FollowKEK(ctx context.Context) error {
	all, err := r.store.Jobs(ctx)
	if err != nil {
		return err
	}
	return r.followKEK(ctx, all)
}

var errNotRunning = errors.New("job is not running")

// lease takes or renews the job's lease.
func (r *Runner) lease(ctx context.Context, id string) (store.Job, error) {
	return r.store.UpdateJob(ctx, id, func(j *store.Job) error {
		now := r.now().UTC()
		if j.State != store.JobRunning {
			return errNotRunning
		}
		if j.Owner != r.cfg.Owner && j.Owner != "" && now.Before(j.LeaseUntil) {
			return fmt.Errorf("job %s: %w by %s until %s", j.ID, store.ErrLeaseHeld, j.Owner, j.LeaseUntil.Format(time.RFC3339))
		}
		if j.Owner != r.cfg.Owner {
			j.RunStarted, j.RunDone = now, j.Done
		}
		j.Owner, j.LeaseUntil = r.cfg.Owner, now.Add(r.cfg.Lease)
		return nil
	})
}

// heartbeat renews the lease every Lease/3 and cancels the job's context
// once the lease is lost or the job was canceled.
func (r *Runner) heartbeat(ctx context.Context, cancel context.CancelFunc, id string) {
	t := time.NewTicker(r.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_, err := r.store.UpdateJob(ctx, id, func(j *store.Job) error {
			if j.Owner != r.cfg.Owner {
				return store.ErrLeaseHeld
			}
			if j.State != store.JobRunning {
				return errNotRunning
			}
			j.LeaseUntil = r.now().UTC().Add(r.cfg.Lease)
			return nil
		})
		if errors.Is(err, store.ErrLeaseHeld) || errors.Is(err, errNotRunning) {
			r.log.Warn("jobs: lost the job", zap.String("job", id), zap.Error(err))
			cancel()
			return
		}
	}
}

// step turns one group into its new state.
type step func(ctx context.Context, g store.Group) (store.Group, bool, error)

func (r *Runner) stepFor(ctx context.Context, j store.Job) (step, error) {
	switch j.Kind {
	case KindKEKRotation:
		to, err := strconv.ParseUint(j.Params["to"], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: params %v", ErrInvalid, j.Params)
		}
		// New keys of this replica go under the new KEK from now on.
		if err := r.hsm.UseKEK(ctx, uint32(to)); err != nil {
			return nil, err
		}
		return func(ctx context.Context, g store.Group) (store.Group, bool, error) {
			return r.svc.RewrapGroupKEK(ctx, r.hsm, g, uint32(to))
		}, nil
	case KindGroupRotation:
		e, u := j.Params["escrow"] == "true", j.Params["unlock"] == "true"
		return func(ctx context.Context, g store.Group) (store.Group, bool, error) {
			return r.svc.RotatedGroup(ctx, g, e, u, j.Created)
		}, nil
	}
	return nil, fmt.Errorf("%w: unknown kind %q", ErrInvalid, j.Kind)
}

// run works on a leased job until it ends, fails or the lease is lost.
func (r *Runner) run(ctx context.Context, j store.Job) {
	// The events its checkpoints write (key_rotated) name the job.
	ctx, cancel := context.WithCancel(store.WithOrigin(ctx, store.Origin{Job: j.ID}))
	defer cancel()
	go r.heartbeat(ctx, cancel, j.ID)
	log := r.log.With(zap.String("job", j.ID), zap.String("kind", j.Kind))
	log.Info("jobs: running", zap.Int("pass", j.Pass), zap.String("cursor", j.Cursor), zap.Int64("done", j.Done))
	fn, err := r.stepFor(ctx, j)
	if err == nil {
		err = r.passes(ctx, j, fn)
	}
	switch {
	case err == nil:
		log.Info("jobs: done")
	case ctx.Err() != nil, errors.Is(err, store.ErrLeaseHeld), errors.Is(err, errNotRunning):
		log.Info("jobs: stopped", zap.Error(err))
	default:
		log.Error("jobs: failed", zap.Error(err))
		_, _ = r.store.UpdateJob(context.WithoutCancel(ctx), j.ID, func(cur *store.Job) error {
			if cur.Owner != r.cfg.Owner || cur.State != store.JobRunning {
				return store.ErrLeaseHeld
			}
			cur.State, cur.Error, cur.Updated = store.JobFailed, err.Error(), r.now().UTC()
			return nil
		})
	}
}

// prepared is a page worked on ahead: the groups after cursor after, and
// what fn made of them.
type prepared struct {
	after   string
	page    []store.Group
	out     []store.Group
	changed int
	err     error
}

// prepare lists the page after cursor and runs fn on it.
func (r *Runner) prepare(ctx context.Context, after string, fn step) *prepared {
	p := &prepared{after: after}
	if p.page, p.err = r.store.ListGroups(ctx, after, r.cfg.Batch); p.err == nil && len(p.page) > 0 {
		p.out, p.changed, p.err = r.work(ctx, p.page, fn)
	}
	return p
}

// passes scans the groups a batch at a time. The next batch's HSM work
// runs while the current batch commits (its fsync, its records' encoding),
// so the HSM does not wait for the store; batches still commit one after
// the other, each with its own checkpoint, and a batch worked on ahead is
// committed only through its own CommitBatch, which rejects it if a group
// changed meanwhile.
func (r *Runner) passes(ctx context.Context, j store.Job, fn step) error {
	var ahead *prepared
	for {
		var cur *prepared
		if ahead != nil && ahead.after == j.Cursor && ahead.err == nil && len(ahead.page) > 0 {
			cur = ahead
		} else {
			cur = r.prepare(ctx, j.Cursor, fn)
		}
		ahead = nil
		if cur.err != nil {
			return cur.err
		}
		page := cur.page
		if len(page) == 0 {
			// End of a pass: done if it changed nothing, else check again.
			total, err := r.store.CountGroups(ctx)
			if err != nil {
				return err
			}
			j, err = r.store.UpdateJob(ctx, j.ID, func(cur *store.Job) error {
				if cur.Owner != r.cfg.Owner {
					return store.ErrLeaseHeld
				}
				if cur.State != store.JobRunning {
					return errNotRunning
				}
				now := r.now().UTC()
				cur.Updated = now
				if cur.Changed == 0 {
					cur.State, cur.Owner, cur.LeaseUntil = store.JobDone, "", time.Time{}
					return nil
				}
				cur.Pass++
				cur.Cursor, cur.Done, cur.Changed, cur.Total = "", 0, 0, total
				cur.RunStarted, cur.RunDone = now, 0
				return nil
			})
			if err != nil {
				return err
			}
			if j.State == store.JobDone {
				return nil
			}
			continue
		}
		last := page[len(page)-1].ID
		next := make(chan *prepared, 1)
		go func() { next <- r.prepare(ctx, last, fn) }()
		committed, err := r.store.CommitBatch(ctx, store.Batch{
			JobID: j.ID, Owner: r.cfg.Owner, Groups: cur.out, Cursor: last,
			Done: j.Done + int64(len(page)), Changed: j.Changed + int64(cur.changed),
		})
		ahead = <-next
		if errors.Is(err, store.ErrConflict) {
			// A group changed under us (a rotation by a request): read
			// the batch again and redo it.
			ahead = nil
			continue
		}
		if err != nil {
			return err
		}
		if committed.State != store.JobRunning {
			return errNotRunning
		}
		j = committed
	}
}

// work runs fn on every group of a page with Workers goroutines and returns
// the groups that changed, in page order.
func (r *Runner) work(ctx context.Context, page []store.Group, fn step) ([]store.Group, int, error) {
	res := make([]store.Group, len(page))
	chg := make([]bool, len(page))
	errs := make([]error, len(page))
	var wg sync.WaitGroup
	next := make(chan int)
	for range r.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				res[i], chg[i], errs[i] = fn(ctx, page[i])
			}
		}()
	}
	for i := range page {
		next <- i
	}
	close(next)
	wg.Wait()
	var out []store.Group
	for i := range page {
		if errs[i] != nil {
			return nil, 0, errs[i]
		}
		if chg[i] {
			out = append(out, res[i])
		}
	}
	return out, len(out), nil
}

// Jobs lists every job.
func (r *Runner) Jobs(ctx context.Context) ([]store.Job, error) { return r.store.Jobs(ctx) }

// DestroyKEK destroys master KEK version v on the token, refusing while a
// KEK rotation runs, while v is the KEK new keys go under (the operator's
// choice: kekTarget), or while any stored key is still wrapped under v.
func (r *Runner) DestroyKEK(ctx context.Context, v uint32) error {
	all, err := r.store.Jobs(ctx)
	if err != nil {
		return fmt.Errorf("%w: store: %w", escrow.ErrUnavailable, err)
	}
	for _, j := range all {
		if j.Kind == KindKEKRotation && j.State == store.JobRunning {
			return fmt.Errorf("%w: KEK rotation %s is running: let it finish", escrow.ErrPrecondition, j.ID)
		}
	}
	if err := r.followKEK(ctx, all); err != nil {
		return fmt.Errorf("%w: HSM: %w", escrow.ErrUnavailable, err)
	}
	vs, err := r.hsm.KEKVersions(ctx)
	if err != nil {
		return fmt.Errorf("%w: HSM: %w", escrow.ErrUnavailable, err)
	}
	found := false
	for _, x := range vs {
		found = found || x == v
	}
	if !found {
		return fmt.Errorf("%w: master KEK version %d is not a usable KEK on the token (usable: %v)", escrow.ErrPrecondition, v, vs)
	}
	if v == r.hsm.CurrentKEK() {
		return fmt.Errorf("%w: master KEK version %d is the one new keys go under: rotate to another first", escrow.ErrPrecondition, v)
	}
	use, err := r.svc.KEKUse(ctx)
	if err != nil {
		return err
	}
	if n := use[v]; n > 0 {
		return fmt.Errorf("%w: %d stored keys are still wrapped under master KEK version %d: run a kek-rotation job first", escrow.ErrPrecondition, n, v)
	}
	if err := r.hsm.DestroyKEK(ctx, v); err != nil {
		return fmt.Errorf("%w: HSM: %w", escrow.ErrUnavailable, err)
	}
	r.log.Warn("jobs: master KEK version destroyed", zap.Uint32("kek_version", v))
	return nil
}
