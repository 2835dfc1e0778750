// Package backend is the reference sync backend: an HTTP/JSON API for
// devices (accounts, device enrolment, groups and their members, key
// bundles, encrypted records, consumed unlock codes, notifications), the
// escrowd calls each change needs, a cycle job that does the batched
// work, and a reader of escrowd's event feed.
//
// The backend stores and forwards; it holds no key that opens a slot or a
// record. It calls escrowd through the Escrowd interface, which lists
// every operation it needs.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// Errors of the operations, mapped to HTTP statuses by the API.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
	// ErrStaleGDK: a record written under a GDK version that is not the
	// group's current one.
	ErrStaleGDK = errors.New("the group has a newer data key")
)

// Config configures a Server.
type Config struct {
	Store   store.Store
	Escrowd Escrowd
	Log     *slog.Logger
	// Window is how far a request's time may be from the backend's clock
	// (default 2 minutes); each nonce is remembered that long.
	Window time.Duration
	// CycleEvery is the cycle job's period (default 15 minutes);
	// EventsEvery how often the event feed is read (default 10 s).
	CycleEvery  time.Duration
	EventsEvery time.Duration
	// BatchSize is the most items of one BatchRewrap call (default and
	// at most MaxBatch).
	BatchSize int
	// AllowOrigins are the web origins (scheme://host:port) whose pages
	// may call the API from a browser (CORS); none by default.
	AllowOrigins []string
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the backend.
type Server struct {
	cfg     Config
	st      store.Store
	esc     Escrowd
	log     *slog.Logger
	metrics *metrics
	// rotating serialises the rotations of one group in this process;
	// the store's compare-and-set covers several replicas.
	rotating sync.Map
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Escrowd == nil {
		return nil, errors.New("backend: a store and an escrowd client are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Window <= 0 {
		cfg.Window = 2 * time.Minute
	}
	if cfg.CycleEvery <= 0 {
		cfg.CycleEvery = 15 * time.Minute
	}
	if cfg.EventsEvery <= 0 {
		cfg.EventsEvery = 10 * time.Second
	}
	if cfg.BatchSize <= 0 || cfg.BatchSize > MaxBatch {
		cfg.BatchSize = MaxBatch
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, st: cfg.Store, esc: cfg.Escrowd, log: cfg.Log, metrics: newMetrics()}, nil
}

// Run runs the cycle job and the event reader until ctx ends, each once
// at the start.
func (s *Server) Run(ctx context.Context) {
	if _, err := s.PollEvents(ctx); err != nil {
		s.log.Error("event feed", "err", err)
	}
	if _, err := s.Cycle(ctx); err != nil {
		s.log.Error("cycle", "err", err)
	}
	cycle := time.NewTicker(s.cfg.CycleEvery)
	defer cycle.Stop()
	events := time.NewTicker(s.cfg.EventsEvery)
	defer events.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-cycle.C:
			if _, err := s.Cycle(ctx); err != nil {
				s.log.Error("cycle", "err", err)
			}
		case <-events.C:
			if _, err := s.PollEvents(ctx); err != nil {
				s.log.Error("event feed", "err", err)
			}
		}
	}
}

// mutate applies f to the stored group and stores the result, re-reading
// and re-applying on a lost compare-and-set. f must depend only on the
// group it is given.
func (s *Server) mutate(ctx context.Context, id string, f func(g *store.Group) error) (store.Group, error) {
	for range 16 {
		g, err := s.st.Group(ctx, id)
		if err != nil {
			return g, err
		}
		if err := f(&g); err != nil {
			return g, err
		}
		v, err := s.st.UpdateGroup(ctx, g)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		g.Version = v
		return g, err
	}
	return store.Group{}, fmt.Errorf("group %s: too many concurrent writers", id)
}

// member returns the group if account is one of its members.
func (s *Server) member(ctx context.Context, group, account string) (store.Group, error) {
	g, err := s.st.Group(ctx, group)
	if err != nil {
		return g, err
	}
	if !g.IsMember(account) {
		// Not found rather than forbidden: a non-member learns nothing of
		// which groups exist.
		return g, fmt.Errorf("group %s: %w", group, store.ErrNotFound)
	}
	return g, nil
}

// work is one re-wrap a group needs: to a recipient, or (to nil) a
// re-seal of its escrow slot to the newest escrow key.
type work struct {
	group string
	slot  []byte
	to    *Recipient
}

// missing lists the re-wraps g needs: a member slot per member, a device
// slot per device of a member, and an escrow slot of the newest escrow key
// version escrowd announced.
func (s *Server) missing(ctx context.Context, g *store.Group) ([]work, error) {
	if g.Bundle == nil {
		return nil, nil
	}
	b, err := bundle.Parse(g.Bundle)
	if err != nil {
		return nil, fmt.Errorf("stored bundle of %s: %w", g.ID, err)
	}
	es, raw, err := escrowSlot(b, g.GDKVersion)
	if err != nil {
		return nil, err
	}
	var out []work
	for _, m := range g.Members() {
		a, err := s.st.Account(ctx, m)
		if err != nil {
			return nil, err
		}
		if !hasSlot(b, bundle.KindMember, m, g.GDKVersion, a.MemberKeyVersion) {
			out = append(out, work{g.ID, raw, &Recipient{Kind: Member, ID: m, KeyVersion: a.MemberKeyVersion, Suite: bundle.SuiteECDHP256, PublicKey: a.MemberKey}})
		}
		ds, err := s.st.Devices(ctx, m)
		if err != nil {
			return nil, err
		}
		for _, d := range ds {
			if !hasSlot(b, bundle.KindDevice, d.ID, g.GDKVersion, d.WrapKeyVersion) {
				out = append(out, work{g.ID, raw, &Recipient{Kind: Device, ID: d.ID, KeyVersion: d.WrapKeyVersion, Suite: bundle.SuiteECDHP256, PublicKey: d.WrapKey}})
			}
		}
	}
	if es.KeyVersion < g.EscrowKeyVersion || g.Reseal {
		out = append(out, work{group: g.ID, slot: raw})
	}
	return out, nil
}

// needEpoch lists the members who need a new epoch of unlock codes: none
// yet, or a code reported used.
func needEpoch(g *store.Group) []string {
	if g.Bundle == nil {
		return nil
	}
	var out []string
	for _, m := range g.Members() {
		if g.Epochs[m] == 0 || slices.Contains(g.NeedEpoch, m) {
			out = append(out, m)
		}
	}
	return out
}

// applySlots stores slots escrowd made for group.
func (s *Server) applySlots(ctx context.Context, group string, slots [][]byte) (store.Group, error) {
	return s.mutate(ctx, group, func(g *store.Group) error {
		b, err := bundle.Parse(g.Bundle)
		if err != nil {
			return err
		}
		if err := addSlots(g, b, slots); err != nil {
			return err
		}
		return storeBundle(g, b)
	})
}

// issueEpoch asks escrowd for a new epoch of user's codes and stores its
// slots in place of the user's older ones.
func (s *Server) issueEpoch(ctx context.Context, group, user string) error {
	g, err := s.st.Group(ctx, group)
	if err != nil {
		return err
	}
	b, err := bundle.Parse(g.Bundle)
	if err != nil {
		return err
	}
	_, raw, err := escrowSlot(b, g.GDKVersion)
	if err != nil {
		return err
	}
	e, err := s.esc.IssueUnlockCodes(ctx, group, user, raw)
	if err != nil {
		s.metrics.epochs.WithLabelValues("error").Inc()
		return err
	}
	s.metrics.epochs.WithLabelValues("ok").Inc()
	_, err = s.mutate(ctx, group, func(g *store.Group) error {
		if g.Epochs == nil {
			g.Epochs = map[string]uint32{}
		}
		if g.Epochs[user] >= e.Epoch {
			return nil // a newer epoch is stored already
		}
		b, err := bundle.Parse(g.Bundle)
		if err != nil {
			return err
		}
		if err := addSlots(g, b, e.Slots); err != nil {
			return err
		}
		g.Epochs[user] = e.Epoch
		g.NeedEpoch = slices.DeleteFunc(g.NeedEpoch, func(u string) bool { return u == user })
		return storeBundle(g, b)
	})
	return err
}

// reconcile does at once what a change of group needs: a re-wrap per new
// member or device, an epoch of codes per member without one. What fails
// is left for the cycle job, which finds it the same way.
func (s *Server) reconcile(ctx context.Context, group string) error {
	g, err := s.st.Group(ctx, group)
	if err != nil {
		return err
	}
	ws, err := s.missing(ctx, &g)
	if err != nil {
		return err
	}
	var slots [][]byte
	var errs []error
	for _, w := range ws {
		if w.to == nil {
			continue // re-seals are the cycle job's
		}
		slot, err := s.esc.Rewrap(ctx, group, w.slot, *w.to)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		slots = append(slots, slot)
	}
	if len(slots) > 0 {
		if _, err := s.applySlots(ctx, group, slots); err != nil {
			return err
		}
	}
	for _, u := range needEpoch(&g) {
		if err := s.issueEpoch(ctx, group, u); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
