-- escrowd schema version 5: the event outbox (docs/OPERATIONS.md, "The
-- event feed"). A transaction that changes what a user should hear of
-- inserts its event here before it commits; the event has no seq yet.
-- Readers number events in the order they become visible (events.go):
-- under the row lock of event_counter, every visible unnumbered event gets
-- the next numbers, in id order. A transaction that took a low id but
-- commits late is therefore numbered after everything already read, and
-- a reader that asks for seq > its cursor never skips it.

CREATE TABLE events (
    id      bigserial   PRIMARY KEY,  -- insertion order; never shown
    seq     bigint      UNIQUE,       -- the feed's cursor; NULL until numbered
    created timestamptz NOT NULL,
    doc     jsonb       NOT NULL
);

CREATE INDEX events_unnumbered ON events (id) WHERE seq IS NULL;
CREATE INDEX events_created ON events (created);

-- One row: the last seq given. Its row lock serialises numbering and
-- pruning across replicas; writers never take it.
CREATE TABLE event_counter (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    last bigint  NOT NULL
);

INSERT INTO event_counter (one, last) VALUES (true, 0);
