-- escrowd schema version 2: rate-limit windows and dual-control approvals,
-- shared by every replica so that limits and approvals hold fleet-wide.

CREATE TABLE rate_windows (
    key          text COLLATE "C" PRIMARY KEY,
    window_start bigint NOT NULL,
    count        integer NOT NULL
);

CREATE TABLE approvals (
    id      text COLLATE "C" PRIMARY KEY,
    created timestamptz NOT NULL,
    doc     jsonb       NOT NULL
);
