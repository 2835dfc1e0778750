-- escrowd schema version 1: groups (key versions wrapped under the master
-- KEK, as JSON), unlock-code state, and jobs with their checkpoints.
-- Ids sort in byte order ("C" collation), as the embedded store does.

CREATE TABLE groups (
    id  text COLLATE "C" PRIMARY KEY,
    rev bigint NOT NULL,
    doc jsonb  NOT NULL
);

CREATE TABLE codes (
    group_id       text COLLATE "C" NOT NULL REFERENCES groups (id),
    user_id        text COLLATE "C" NOT NULL,
    epoch          bigint      NOT NULL,
    unlock_version bigint      NOT NULL,
    revealed       boolean[]   NOT NULL,
    updated        timestamptz NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE jobs (
    id      text COLLATE "C" PRIMARY KEY,
    created timestamptz NOT NULL,
    doc     jsonb       NOT NULL
);
