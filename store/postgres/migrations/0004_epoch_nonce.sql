-- escrowd schema version 4: each unlock-code epoch's random nonce, bound
-- into its codes (docs/FORMAT.md, "Unlock codes"), so that an epoch issued
-- again under the same number after a restore has other codes. NULL for an
-- epoch issued before this version: its codes cannot be revealed until a
-- new epoch is issued.

ALTER TABLE codes ADD COLUMN nonce bytea;
