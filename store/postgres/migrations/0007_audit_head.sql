-- escrowd schema version 7: the audit trail's anchored head. The writer
-- keeps the last batch it committed to Vault here (one row), so that
-- deleting the last batches in Vault is found at the next start instead
-- of being chained over (docs/AUDIT.md, "Anchored head"). One row per
-- trail (KV mount and prefix); a row only moves forward.

CREATE TABLE audit_head (
    trail text   PRIMARY KEY,
    seq  bigint NOT NULL CHECK (seq > 0),
    n    bigint NOT NULL,
    hash text   NOT NULL
);
