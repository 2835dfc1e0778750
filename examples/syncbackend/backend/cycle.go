package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// CycleReport says what one run of the cycle job did.
type CycleReport struct {
	Groups int
	// Rewraps to members and devices, and escrow slots re-sealed; Failed
	// items are left for the next run.
	Rewraps, Resealed, Failed int
	Epochs                    int
}

// Cycle runs the cycle job once over every group: the re-wraps that a
// join left undone, the escrow slots whose escrow key has a newer version,
// and the unlock epochs still owed. Re-wraps go to escrowd in batches of up
// to Config.BatchSize items (BatchRewrap); a lone escrow re-seal goes through
// RewrapToEscrow, which names the version it sealed to.
func (s *Server) Cycle(ctx context.Context) (CycleReport, error) {
	start := time.Now()
	var rep CycleReport
	var pending []work
	var errs []error
	flush := func() {
		if len(pending) == 0 {
			return
		}
		errs = append(errs, s.runBatch(ctx, pending, &rep))
		pending = pending[:0]
	}
	for after := ""; ; {
		ids, err := s.st.Groups(ctx, after, 100)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
		for _, id := range ids {
			rep.Groups++
			g, err := s.st.Group(ctx, id)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			ws, err := s.missing(ctx, &g)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, w := range ws {
				pending = append(pending, w)
				if len(pending) == s.cfg.BatchSize {
					flush()
				}
			}
			for _, u := range needEpoch(&g) {
				if err := s.issueEpoch(ctx, id, u); err != nil {
					errs = append(errs, err)
					continue
				}
				rep.Epochs++
			}
		}
	}
	flush()
	err := errors.Join(errs...)
	s.metrics.cycleSeconds.Observe(time.Since(start).Seconds())
	switch {
	case err != nil:
		s.metrics.cycles.WithLabelValues("error").Inc()
	case rep.Failed > 0:
		s.metrics.cycles.WithLabelValues("partial").Inc()
	default:
		s.metrics.cycles.WithLabelValues("ok").Inc()
		s.metrics.cycleLast.SetToCurrentTime()
	}
	s.log.Info("cycle", "groups", rep.Groups, "rewraps", rep.Rewraps, "resealed", rep.Resealed, "failed", rep.Failed, "epochs", rep.Epochs, "err", err)
	return rep, err
}

func target(w work) string {
	if w.to == nil {
		return "escrow"
	}
	return w.to.Kind.String()
}

// runBatch sends ws to escrowd and stores the slots, group by group.
func (s *Server) runBatch(ctx context.Context, ws []work, rep *CycleReport) error {
	slots := map[string][][]byte{}
	count := func(w work, err error) {
		outcome := "ok"
		switch {
		case err != nil:
			outcome = "error"
			rep.Failed++
			s.log.Warn("cycle re-wrap failed", "group", w.group, "target", target(w), "err", err)
		case w.to == nil:
			rep.Resealed++
		default:
			rep.Rewraps++
		}
		s.metrics.rewraps.WithLabelValues(target(w), outcome).Inc()
	}
	if len(ws) == 1 && ws[0].to == nil {
		slot, _, err := s.esc.RewrapToEscrow(ctx, ws[0].group, ws[0].slot)
		s.metrics.calls.WithLabelValues("RewrapToEscrow", outcome(err)).Inc()
		count(ws[0], err)
		if err != nil {
			return nil
		}
		slots[ws[0].group] = append(slots[ws[0].group], slot)
	} else {
		items := make([]BatchItem, len(ws))
		for i, w := range ws {
			items[i] = BatchItem{Ref: strconv.Itoa(i), Group: w.group, EscrowSlot: w.slot, To: w.to}
		}
		res, err := s.esc.BatchRewrap(ctx, items)
		s.metrics.calls.WithLabelValues("BatchRewrap", outcome(err)).Inc()
		if err != nil {
			for _, w := range ws {
				count(w, err)
			}
			return err
		}
		for i, r := range res {
			if r.Err == nil && r.Ref != items[i].Ref {
				r.Err = fmt.Errorf("%w: BatchRewrap result %d has reference %q, want %q", ErrEscrowdRefused, i, r.Ref, items[i].Ref)
			}
			count(ws[i], r.Err)
			if r.Err == nil {
				slots[ws[i].group] = append(slots[ws[i].group], r.Slot)
			}
		}
	}
	var errs []error
	for g, ss := range slots {
		if _, err := s.applySlots(ctx, g, ss); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
