-- Jobs, their file tasks, and the SHA-1 cache of local files.
-- Applied by boxd.jobs.store inside one transaction; the store records the version.

CREATE TABLE jobs (
    seq             INTEGER PRIMARY KEY,            -- insertion order, the tie-breaker
    id              TEXT    NOT NULL UNIQUE,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    waiting_reason  TEXT,
    source          TEXT    NOT NULL,
    destination     TEXT,
    folder_id       TEXT,
    mode            TEXT    NOT NULL CHECK (mode IN ('copy', 'mirror')),
    on_conflict     TEXT    NOT NULL CHECK (on_conflict IN ('version', 'skip', 'fail')),
    idempotency_key TEXT    UNIQUE,
    priority        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    files_total     INTEGER NOT NULL DEFAULT 0,
    files_done      INTEGER NOT NULL DEFAULT 0,
    files_skipped   INTEGER NOT NULL DEFAULT 0,
    files_failed    INTEGER NOT NULL DEFAULT 0,
    bytes_total     INTEGER NOT NULL DEFAULT 0,
    bytes_done      INTEGER NOT NULL DEFAULT 0,
    error_code      TEXT,
    error_message   TEXT,
    CHECK ((destination IS NULL) <> (folder_id IS NULL))
);

-- claim_next_job: the best claimable job without a scan.
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, seq)
    WHERE state = 'queued' AND waiting_reason IS NULL;
CREATE INDEX jobs_by_state ON jobs (state, created_at);

CREATE TABLE files (
    id            INTEGER PRIMARY KEY,
    job_id        TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    rel_path      TEXT    NOT NULL,
    action        TEXT    NOT NULL CHECK (action IN ('upload', 'trash')),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'skipped', 'failed', 'cancelled')),
    size          INTEGER NOT NULL CHECK (size >= 0),
    mtime_ns      INTEGER NOT NULL,
    inode         INTEGER NOT NULL,
    sha1          TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    box_file_id   TEXT,
    remote_id     TEXT,
    error_code    TEXT,
    error_message TEXT,
    checkpoint    TEXT,                             -- the upload session's JSON, to resume it
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, action, rel_path)
);

-- Per-job state lookups and the totals, read from the index alone.
CREATE INDEX files_by_job_state ON files (job_id, state, action, size, bytes_done);
CREATE INDEX files_running ON files (state) WHERE state = 'running';

CREATE TABLE sha1_cache (
    path       TEXT    PRIMARY KEY,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    inode      INTEGER NOT NULL,
    sha1       TEXT    NOT NULL,
    updated_at REAL    NOT NULL
) WITHOUT ROWID;
