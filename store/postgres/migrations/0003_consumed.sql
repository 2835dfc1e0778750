-- escrowd schema version 3: codes a device reported used. NULL until the
-- first code of an epoch is consumed; a new epoch clears it.

ALTER TABLE codes ADD COLUMN consumed boolean[];
