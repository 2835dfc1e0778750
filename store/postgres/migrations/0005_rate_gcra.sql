-- escrowd schema version 5: rate limits are a GCRA (store.RateLimit.Take)
-- on the database's clock, not fixed windows on each replica's clock.
-- Each key keeps one number, tat: its theoretical arrival time, in
-- nanoseconds since the Unix epoch. A row from before this version keeps
-- its window (window_start, count) and has no tat; the first request for
-- its key converts it (store.RateLimit.LegacyTAT), since only the policy
-- knows the limit and window it was counted under.

ALTER TABLE rate_windows RENAME TO rate_limits;
ALTER TABLE rate_limits ALTER COLUMN window_start DROP NOT NULL;
ALTER TABLE rate_limits ALTER COLUMN count DROP NOT NULL;
ALTER TABLE rate_limits ADD COLUMN tat bigint;
