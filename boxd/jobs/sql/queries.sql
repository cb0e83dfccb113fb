-- Every statement boxd.jobs.store runs. Each block starts with "-- name: <name>", may carry
-- comment lines that describe it, and holds exactly one statement with :named parameters.

-- name: journal_mode_wal
-- Returns the journal mode in force; the store refuses to run without WAL.
PRAGMA journal_mode = WAL;

-- name: foreign_keys_on
PRAGMA foreign_keys = ON;

-- name: synchronous_normal
-- WAL + NORMAL: a commit survives the process being killed; only an OS crash or power loss
-- may undo the latest commits. Used for progress (file starts, checkpoints, file results).
PRAGMA synchronous = NORMAL;

-- name: synchronous_full
-- WAL + FULL: the WAL is fsynced at commit. Used for promises made to a client (job accepted,
-- cancelled, retried, finished) and for migrations.
PRAGMA synchronous = FULL;

-- name: begin
BEGIN IMMEDIATE;

-- name: commit
COMMIT;

-- name: rollback
ROLLBACK;

-- name: schema_version_create
CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);

-- name: schema_version_current
SELECT coalesce(max(version), 0) AS version FROM schema_version;

-- name: schema_version_add
INSERT INTO schema_version (version, name, applied_at) VALUES (:version, :name, :applied_at);

-- name: insert_job
INSERT INTO jobs (
    id, state, waiting_reason, source, destination, folder_id, mode, on_conflict, idempotency_key,
    priority, created_at, started_at, finished_at, attempts, error_code, error_message
) VALUES (
    :id, :state, :waiting_reason, :source, :destination, :folder_id, :mode, :on_conflict, :idempotency_key,
    :priority, :created_at, :started_at, :finished_at, :attempts, :error_code, :error_message
);

-- name: update_job
-- The fields a transition may change; the request fields never change.
UPDATE jobs
   SET state = :state, waiting_reason = :waiting_reason, started_at = :started_at,
       finished_at = :finished_at, attempts = :attempts, error_code = :error_code,
       error_message = :error_message
 WHERE id = :id;

-- name: get_job
SELECT * FROM jobs WHERE id = :id;

-- name: get_job_by_key
SELECT * FROM jobs WHERE idempotency_key = :key;

-- name: list_jobs
-- Newest first; :state NULL lists every state.
SELECT * FROM jobs
 WHERE :state IS NULL OR state = :state
 ORDER BY created_at DESC, seq DESC
 LIMIT :limit;

-- name: next_claimable_job
-- Highest priority first, then the oldest; jobs with a waiting_reason wait.
SELECT * FROM jobs
 WHERE state = 'queued' AND waiting_reason IS NULL
 ORDER BY priority DESC, created_at, seq
 LIMIT 1;

-- name: jobs_in_state
SELECT * FROM jobs WHERE state = :state ORDER BY seq;

-- name: count_jobs
SELECT state, count(*) AS n FROM jobs GROUP BY state;

-- name: refresh_totals
-- Recount a job's files after any change to them. bytes count uploads only: trashing moves no data.
UPDATE jobs
   SET files_total = t.total, files_done = t.done, files_skipped = t.skipped, files_failed = t.failed,
       bytes_total = t.bytes_total, bytes_done = t.bytes_done
  FROM (SELECT count(*) AS total,
               coalesce(sum(state = 'done'), 0) AS done,
               coalesce(sum(state = 'skipped'), 0) AS skipped,
               coalesce(sum(state = 'failed'), 0) AS failed,
               coalesce(sum(CASE WHEN action = 'upload' THEN size END), 0) AS bytes_total,
               coalesce(sum(CASE WHEN action = 'upload' THEN bytes_done END), 0) AS bytes_done
          FROM files WHERE job_id = :job_id) AS t
 WHERE jobs.id = :job_id;

-- name: insert_file
INSERT INTO files (
    job_id, rel_path, action, state, size, mtime_ns, inode, sha1, attempts, box_file_id, remote_id,
    error_code, error_message, checkpoint, bytes_done
) VALUES (
    :job_id, :rel_path, :action, :state, :size, :mtime_ns, :inode, :sha1, :attempts, :box_file_id, :remote_id,
    :error_code, :error_message, :checkpoint, :bytes_done
);

-- name: update_file
UPDATE files
   SET rel_path = :rel_path, action = :action, state = :state, size = :size, mtime_ns = :mtime_ns,
       inode = :inode, sha1 = :sha1, attempts = :attempts, box_file_id = :box_file_id,
       remote_id = :remote_id, error_code = :error_code, error_message = :error_message,
       checkpoint = :checkpoint, bytes_done = :bytes_done
 WHERE id = :id;

-- name: delete_file
DELETE FROM files WHERE id = :id;

-- name: get_file
SELECT * FROM files WHERE id = :id;

-- name: job_files
SELECT * FROM files WHERE job_id = :job_id ORDER BY id;

-- name: job_files_in_state
-- In plan order; :limit -1 means all.
SELECT * FROM files WHERE job_id = :job_id AND state = :state ORDER BY id LIMIT :limit;

-- name: files_in_state
SELECT * FROM files WHERE state = :state ORDER BY id;

-- name: count_job_files
SELECT state, count(*) AS n FROM files WHERE job_id = :job_id GROUP BY state;

-- name: get_sha1
-- A cached hash counts only while the file looks unchanged.
SELECT sha1 FROM sha1_cache
 WHERE path = :path AND size = :size AND mtime_ns = :mtime_ns AND inode = :inode;

-- name: put_sha1
INSERT INTO sha1_cache (path, size, mtime_ns, inode, sha1, updated_at)
VALUES (:path, :size, :mtime_ns, :inode, :sha1, :updated_at)
ON CONFLICT (path) DO UPDATE
   SET size = excluded.size, mtime_ns = excluded.mtime_ns, inode = excluded.inode,
       sha1 = excluded.sha1, updated_at = excluded.updated_at;
