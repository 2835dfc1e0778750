package backend

import (
	"context"
	"errors"

	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// EventPageSize is how many events one ListEvents call asks for.
const EventPageSize = 100

// PollEvents reads escrowd's event feed from the stored cursor to its end
// and returns how many events it read. A reveal of a member's code becomes
// a notification for that user; a new escrow key version marks the group
// for the cycle job to re-seal. Each page's notifications and the cursor
// after it are stored in one transaction, so a crash re-reads at most one
// page, which adds nothing twice.
func (s *Server) PollEvents(ctx context.Context) (int, error) {
	n := 0
	for {
		after, err := s.st.Cursor(ctx)
		if err != nil {
			return n, err
		}
		p, err := s.esc.ListEvents(ctx, after, EventPageSize)
		if err != nil {
			return n, err
		}
		if p.Missed > 0 {
			s.metrics.eventsMissed.Add(float64(p.Missed))
			s.log.Warn("escrowd pruned events before they were read: every escrow slot will be re-sealed", "missed", p.Missed, "after", after)
			// A lost key_rotated event would leave a group's escrow slot
			// on an old key version for good: re-seal every group once.
			if err := s.resealAll(ctx); err != nil {
				return n, err
			}
		}
		var notes []store.Notification
		for _, e := range p.Events {
			s.metrics.events.WithLabelValues(e.Kind).Inc()
			switch e.Kind {
			case EventCodeRevealed:
				g, err := s.st.Group(ctx, e.Group)
				if errors.Is(err, store.ErrNotFound) || err == nil && !g.IsMember(e.User) {
					continue // not one of ours
				}
				if err != nil {
					return n, err
				}
				notes = append(notes, store.Notification{Account: e.User, Sequence: e.Sequence, Kind: e.Kind, Group: e.Group,
					Epoch: e.Epoch, Index: e.Index, Ticket: e.Ticket, Time: e.Time})
			case EventKeyRotated:
				if e.EscrowKeyVersion == 0 {
					continue
				}
				_, err := s.mutate(ctx, e.Group, func(g *store.Group) error {
					g.EscrowKeyVersion = max(g.EscrowKeyVersion, e.EscrowKeyVersion)
					return nil
				})
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					return n, err
				}
			}
		}
		if err := s.st.AddNotifications(ctx, notes, p.Next); err != nil {
			return n, err
		}
		s.metrics.notifications.Add(float64(len(notes)))
		n += len(p.Events)
		if len(p.Events) == 0 || p.Next >= p.Last {
			return n, nil
		}
	}
}

// resealAll marks every group for a re-seal by the next cycle.
func (s *Server) resealAll(ctx context.Context) error {
	for after := ""; ; {
		ids, err := s.st.Groups(ctx, after, 100)
		if err != nil || len(ids) == 0 {
			return err
		}
		for _, id := range ids {
			if _, err := s.mutate(ctx, id, func(g *store.Group) error {
				g.Reseal = g.Bundle != nil
				return nil
			}); err != nil {
				return err
			}
		}
		after = ids[len(ids)-1]
	}
}
