"""The durable job queue: SQLite in WAL mode, driven from one worker thread.

- **SQL** lives in ``sql/queries.sql`` (named blocks, parsed once) and ``sql/migrations/NNNN_*.sql``
  (applied in order at open; ``schema_version`` records them; a newer database is refused).
- **Threads.** The event loop never touches SQLite: every call runs through
  ``anyio.to_thread.run_sync`` under a ``CapacityLimiter(1)``, so one call at a time uses the one
  connection (``check_same_thread=False``). A cancelled caller waits for its call to finish:
  a transaction is never left half done.
- **Transactions.** One per state transition, ``BEGIN IMMEDIATE`` … ``COMMIT``; every state change
  goes through the pure functions of :mod:`boxd.jobs.models`; a bad input raises before anything
  is written, and any error rolls back, so stored rows never change on failure.
- **Durability.** WAL with ``synchronous=NORMAL`` keeps every commit across ``kill -9`` (the WAL
  is in the OS before COMMIT returns); only an OS crash or power loss can undo the latest
  commits. Promises made to a client (job accepted with 202, cancelled, retried, finished) are
  committed with ``synchronous=FULL``, which fsyncs the WAL before COMMIT returns, so they also
  survive power loss. Progress writes (file starts, checkpoints, file results) stay on NORMAL: if
  a power cut loses one, the job re-plans against the remote listing and skips identical files.
- **Errors.** ``sqlite3`` errors never leave this module: ``database is locked`` becomes
  :class:`StoreBusyError` (transient), anything else :class:`StoreError` (permanent).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from boxd.errors import PermanentError, TransientError
from boxd.jobs import models as m
from boxd.jobs.models import ErrorInfo, FileState, FileTask, Job, JobRequest, JobState

_T = TypeVar("_T")
_SHA1 = re.compile(r"[0-9a-f]{40}")


class StoreError(PermanentError):
    """The job database failed."""


class StoreBusyError(TransientError):
    """The job database is locked by another process; try again."""


class NotFoundError(StoreError, LookupError):
    """No such job or file."""


class JobStore(Protocol):
    """What the control server and the scheduler need from the job queue."""

    async def close(self) -> None: ...
    async def create_job(self, req: JobRequest, *, now: float | None = None) -> tuple[Job, bool]: ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]: ...
    async def job_files(self, job_id: str) -> list[FileTask]: ...
    async def claim_next_job(self, now: float) -> Job | None: ...
    async def recover(self) -> list[Job]: ...
    async def set_plan(self, job_id: str, files: Sequence[FileTask]) -> Job: ...
    async def pending_files(self, job_id: str, limit: int) -> list[FileTask]: ...
    async def start_file(self, file_id: int) -> FileTask: ...
    async def finish_file(
        self,
        file_id: int,
        state: FileState,
        *,
        box_file_id: str | None = None,
        error: ErrorInfo | None = None,
        bytes_done: int | None = None,
        max_attempts: int | None = None,
    ) -> FileTask: ...
    async def save_checkpoint(self, file_id: int, checkpoint: str | None, *, bytes_done: int | None = None) -> None: ...
    async def finish_job(self, job_id: str, now: float, *, error: ErrorInfo | None = None) -> Job: ...
    async def cancel_job(self, job_id: str, now: float) -> Job: ...
    async def retry_job(self, job_id: str) -> Job: ...
    async def requeue_job(self, job_id: str, *, reason: str | None = None) -> Job: ...
    async def set_waiting(self, job_ids: Sequence[str] | None, reason: str | None) -> int: ...
    async def counts(self) -> dict[str, int]: ...
    async def cached_sha1(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None: ...
    async def remember_sha1(self, path: str, size: int, mtime_ns: int, inode: int, sha1: str) -> None: ...


# --- SQL files ----------------------------------------------------------------------------

_NAME = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_MIGRATION = re.compile(r"(\d{4})_(\w+)\.sql")


def parse_queries(text: str) -> dict[str, str]:
    """``-- name: x`` blocks → ``{"x": statement}``; whole-line comments are dropped."""
    chunks = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(chunks[1::2], chunks[2::2], strict=True):
        sql = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--")).strip()
        if name in queries or not sql:
            raise StoreError(f"queries.sql: query {name!r} is duplicated or empty")
        queries[name] = sql
    return queries


def split_script(script: str) -> list[str]:
    """A migration's statements, split where SQLite sees a complete statement."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if any(line.strip() and not line.lstrip().startswith("--") for line in buf.splitlines()):
        raise StoreError(f"migration ends in an incomplete statement: {buf.strip()[:80]!r}")
    return statements


@cache
def _queries() -> dict[str, str]:
    return parse_queries((resources.files("boxd.jobs") / "sql" / "queries.sql").read_text("utf-8"))


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """``(version, name, sql)`` of every shipped migration, numbered 1..n without gaps."""
    folder = resources.files("boxd.jobs") / "sql" / "migrations"
    found = sorted(
        (int(match[1]), match[2], f.read_text("utf-8"))
        for f in folder.iterdir()
        if (match := _MIGRATION.fullmatch(f.name))
    )
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise StoreError("the shipped migrations are not numbered 0001..n")
    return tuple(found)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """sqlite3 and file errors → store errors (DESIGN: foreign errors never travel up)."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise StoreBusyError(f"the job database is busy: {exc}") from exc
        raise StoreError(f"job database error: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"job database error: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"cannot open the job database: {exc}") from exc


def _transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``fn`` in ``BEGIN IMMEDIATE`` … ``COMMIT``; roll back if it raises."""
    q = _queries()
    conn.execute(q["begin"])
    try:
        result = fn(conn)
        conn.execute(q["commit"])
    except BaseException:
        if conn.in_transaction:
            conn.execute(q["rollback"])
        raise
    return result


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing migrations, all in one transaction (read under the write lock, so
    two processes opening a new file migrate it once)."""
    q, known = _queries(), migrations()
    current = conn.execute(q["schema_version_current"]).fetchone()[0]
    if current > len(known):
        raise StoreError(f"the job database has schema version {current}; this boxd knows up to {len(known)}")
    for version, name, sql in known[current:]:
        for statement in split_script(sql):
            conn.execute(statement)
        conn.execute(q["schema_version_add"], {"version": version, "name": name, "applied_at": time.time()})


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    q = _queries()
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        mode = conn.execute(q["journal_mode_wal"]).fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: SQLite cannot use WAL mode here (got {mode!r})")
        conn.execute(q["foreign_keys_on"])
        conn.execute(q["synchronous_full"])
        conn.execute(q["schema_version_create"])
        _transaction(conn, _migrate)
        conn.execute(q["synchronous_normal"])
    except BaseException:
        conn.close()
        raise
    return conn


# --- rows <-> models ----------------------------------------------------------------------


_REQUEST_COLUMNS = tuple(f.name for f in fields(JobRequest))
_JOB_COLUMNS: tuple[str, ...] = ("id", "waiting_reason", "created_at", "started_at", "finished_at", "attempts")
_JOB_COLUMNS += ("files_total", "files_done", "files_skipped", "files_failed", "bytes_total", "bytes_done")
_FILE_COLUMNS: tuple[str, ...] = ("id", "job_id", "rel_path", "size", "mtime_ns", "inode", "sha1", "attempts")
_FILE_COLUMNS += ("box_file_id", "remote_id", "checkpoint", "bytes_done")


def _error(row: sqlite3.Row) -> ErrorInfo | None:
    return None if row["error_code"] is None else ErrorInfo(row["error_code"], row["error_message"] or "")


def _error_params(error: ErrorInfo | None) -> dict[str, str | None]:
    return {"error_code": error.code if error else None, "error_message": error.message if error else None}


def _job(row: sqlite3.Row) -> Job:
    enums = {"mode": m.Mode(row["mode"]), "on_conflict": m.OnConflict(row["on_conflict"])}
    req = JobRequest(**({k: row[k] for k in _REQUEST_COLUMNS} | enums))
    return Job(request=req, state=JobState(row["state"]), error=_error(row), **{k: row[k] for k in _JOB_COLUMNS})


def _job_params(job: Job) -> dict[str, Any]:
    own = {k: getattr(job, k) for k in _JOB_COLUMNS}
    return own | job.request.to_api() | {"state": job.state} | _error_params(job.error)


def _file(row: sqlite3.Row) -> FileTask:
    enums = {"action": m.FileAction(row["action"]), "state": FileState(row["state"])}
    return FileTask(error=_error(row), **({k: row[k] for k in _FILE_COLUMNS} | enums))


def _file_params(task: FileTask) -> dict[str, Any]:
    own = {k: getattr(task, k) for k in _FILE_COLUMNS}
    return own | {"action": task.action, "state": task.state} | _error_params(task.error)


# --- the store ----------------------------------------------------------------------------


class Store:
    """The SQLite :class:`JobStore`. Create it with :meth:`open`; every method is a coroutine."""

    def __init__(self, conn: sqlite3.Connection, limiter: anyio.CapacityLimiter) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._limiter = limiter
        self._q = _queries()

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> Store:
        """Open (creating if needed) the database at ``path`` and apply pending migrations."""
        limiter = anyio.CapacityLimiter(1)

        def connect() -> sqlite3.Connection:
            with _mapped():
                return _connect(Path(path), busy_timeout)

        # _connect parsed queries.sql on the worker thread; __init__ reads the cached result.
        return cls(await anyio.to_thread.run_sync(connect, limiter=limiter), limiter)

    async def close(self) -> None:
        """Close the connection; later calls raise :class:`StoreError`. Closing twice is fine."""

        def close(conn: sqlite3.Connection) -> None:
            conn.close()
            self._conn = None

        if self._conn is not None:
            with contextlib.suppress(StoreError):  # a concurrent close() got there first
                await self._run(close, tx=False)

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], *, tx: bool = True, durable: bool = False) -> _T:
        return await anyio.to_thread.run_sync(self._in_thread, fn, tx, durable, limiter=self._limiter)

    def _in_thread(self, fn: Callable[[sqlite3.Connection], _T], tx: bool, durable: bool) -> _T:
        conn, q = self._conn, self._q
        if conn is None:
            raise StoreError("the job store is closed")
        with _mapped():
            if not tx:
                return fn(conn)
            if not durable:
                return _transaction(conn, fn)
            conn.execute(q["synchronous_full"])
            try:
                return _transaction(conn, fn)
            finally:
                conn.execute(q["synchronous_normal"])

    # Helpers, called inside a transaction on the worker thread.

    def _load_job(self, c: sqlite3.Connection, job_id: str) -> Job:
        row = c.execute(self._q["get_job"], {"id": job_id}).fetchone()
        if row is None:
            raise NotFoundError(f"no job {job_id!r}")
        return _job(row)

    def _load_file(self, c: sqlite3.Connection, file_id: int) -> FileTask:
        row = c.execute(self._q["get_file"], {"id": file_id}).fetchone()
        if row is None:
            raise NotFoundError(f"no file task {file_id!r}")
        return _file(row)

    def _files(self, c: sqlite3.Connection, job_id: str, state: FileState, limit: int = -1) -> list[FileTask]:
        params = {"job_id": job_id, "state": state.value, "limit": limit}
        return [_file(r) for r in c.execute(self._q["job_files_in_state"], params)]

    def _save(self, c: sqlite3.Connection, job: Job | None = None, files: Sequence[FileTask] = ()) -> None:
        if files:
            c.executemany(self._q["update_file"], [_file_params(t) for t in files])
        if job is not None:
            c.execute(self._q["update_job"], _job_params(job))

    def _totals(self, c: sqlite3.Connection, job_id: str) -> Job:
        c.execute(self._q["refresh_totals"], {"job_id": job_id})
        return self._load_job(c, job_id)

    # Jobs.

    async def create_job(self, req: JobRequest, *, now: float | None = None) -> tuple[Job, bool]:
        """Queue ``req`` (on disk, fsynced, before this returns); ``(job, True)``. A known
        ``idempotency_key`` returns ``(existing job, False)`` whatever the other fields say."""
        created_at = time.time() if now is None else now

        def run(c: sqlite3.Connection) -> tuple[Job, bool]:
            if req.idempotency_key is not None:
                row = c.execute(self._q["get_job_by_key"], {"key": req.idempotency_key}).fetchone()
                if row is not None:
                    return _job(row), False
            job = Job(id=m.new_job_id(created_at), request=req, created_at=created_at)
            c.execute(self._q["insert_job"], _job_params(job))
            return job, True

        return await self._run(run, durable=True)

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None if there is no such job."""

        def run(c: sqlite3.Connection) -> Job | None:
            row = c.execute(self._q["get_job"], {"id": job_id}).fetchone()
            return None if row is None else _job(row)

        return await self._run(run, tx=False)

    async def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        """Jobs newest first, optionally of one state; ``limit`` is 1..1000 (ValueError otherwise)."""
        if not 1 <= limit <= 1000:
            raise ValueError("limit must lie in 1..1000")
        params = {"state": None if state is None else JobState(state).value, "limit": limit}
        return await self._run(lambda c: [_job(r) for r in c.execute(self._q["list_jobs"], params)], tx=False)

    async def job_files(self, job_id: str) -> list[FileTask]:
        """A job's file tasks in plan order ([] for an unknown job)."""
        params = {"job_id": job_id}
        return await self._run(lambda c: [_file(r) for r in c.execute(self._q["job_files"], params)], tx=False)

    async def claim_next_job(self, now: float) -> Job | None:
        """Move the best queued job (priority desc, then oldest) without a waiting_reason to running."""

        def run(c: sqlite3.Connection) -> Job | None:
            row = c.execute(self._q["next_claimable_job"]).fetchone()
            if row is None:
                return None
            job = m.claim_job(_job(row), now)
            self._save(c, job)
            return job

        return await self._run(run)

    async def recover(self) -> list[Job]:
        """At start: running jobs back to queued (attempts kept, waiting_reason cleared) and running
        files back to pending with their checkpoints. Returns the requeued jobs."""

        def run(c: sqlite3.Connection) -> list[Job]:
            files = [m.interrupt_file(_file(r)) for r in c.execute(self._q["files_in_state"], {"state": "running"})]
            self._save(c, None, files)
            jobs = [_job(r) for r in c.execute(self._q["jobs_in_state"], {"state": JobState.RUNNING.value})]
            for job in jobs:
                self._save(c, m.requeue_job(job))
            for job_id in {f.job_id for f in files} - {j.id for j in jobs}:
                self._totals(c, job_id)
            return [self._totals(c, j.id) for j in jobs]

        return await self._run(run, durable=True)

    async def set_plan(self, job_id: str, files: Sequence[FileTask]) -> Job:
        """Replace the running job's unfinished plan with ``files`` (pending or skipped entries),
        keeping the checkpoints of unchanged pending files (:func:`models.merge_plan`); updates
        the totals. ValueError for a bad entry, InvalidTransition unless the job is running
        with no file running."""

        def run(c: sqlite3.Connection) -> Job:
            job = self._load_job(c, job_id)
            if job.state is not JobState.RUNNING:
                raise m.InvalidTransition("job", job_id, job.state.value, "plan")
            existing = [_file(r) for r in c.execute(self._q["job_files"], {"job_id": job_id})]
            changes = m.merge_plan(job_id, existing, files)
            c.executemany(self._q["delete_file"], [{"id": i} for i in changes.delete])
            self._save(c, None, changes.update)
            c.executemany(self._q["insert_file"], [_file_params(t) for t in changes.insert])
            return self._totals(c, job_id)

        return await self._run(run)

    async def pending_files(self, job_id: str, limit: int) -> list[FileTask]:
        """Up to ``limit`` (≥ 1) pending files of the job, in plan order."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return await self._run(lambda c: self._files(c, job_id, FileState.PENDING, limit), tx=False)

    async def start_file(self, file_id: int) -> FileTask:
        """pending → running; the job must be running."""

        def run(c: sqlite3.Connection) -> FileTask:
            task = self._load_file(c, file_id)
            job = self._load_job(c, task.job_id)
            if job.state is not JobState.RUNNING:
                raise m.InvalidTransition("file", file_id, task.state.value, "start", f"job is {job.state.value}")
            task = m.start_file(task)
            self._save(c, None, [task])
            return task

        return await self._run(run)

    async def finish_file(
        self,
        file_id: int,
        state: FileState,
        *,
        box_file_id: str | None = None,
        error: ErrorInfo | None = None,
        bytes_done: int | None = None,
        max_attempts: int | None = None,
    ) -> FileTask:
        """End a running file as done, skipped or failed; ``pending`` records a transient failure
        (needs ``max_attempts``; the result is failed once they are used up); ``cancelled`` stops
        a pending or running file. Returns the file as stored."""

        def run(c: sqlite3.Connection) -> FileTask:
            task = self._load_file(c, file_id)
            if state is FileState.PENDING:
                if max_attempts is None:
                    raise ValueError("a transient failure needs max_attempts")
                if bytes_done is not None:
                    task = m.checkpoint_file(task, task.checkpoint, bytes_done)
                task = m.fail_file_transient(task, error, max_attempts)
            elif state is FileState.CANCELLED:
                task = m.cancel_file(task)
            else:
                task = m.finish_file(task, state, box_file_id=box_file_id, error=error, bytes_done=bytes_done)
            self._save(c, None, [task])
            self._totals(c, task.job_id)
            return task

        return await self._run(run)

    async def save_checkpoint(self, file_id: int, checkpoint: str | None, *, bytes_done: int | None = None) -> None:
        """Store a pending or running file's upload-session JSON (None clears it) and progress."""

        def run(c: sqlite3.Connection) -> None:
            task = m.checkpoint_file(self._load_file(c, file_id), checkpoint, bytes_done)
            self._save(c, None, [task])
            if bytes_done is not None:
                self._totals(c, task.job_id)

        await self._run(run)

    async def finish_job(self, job_id: str, now: float, *, error: ErrorInfo | None = None) -> Job:
        """running → succeeded, or failed if any file failed (listed in the error). With
        ``error`` (e.g. a refused mirror) the job fails and its pending files are cancelled."""

        def run(c: sqlite3.Connection) -> Job:
            job = self._load_job(c, job_id)
            states = {r["state"]: r["n"] for r in c.execute(self._q["count_job_files"], {"job_id": job_id})}
            failed = self._files(c, job_id, FileState.FAILED)
            pending, running = states.get("pending", 0), states.get("running", 0)
            failures = [(t.rel_path, t.error) for t in failed]
            job = m.finish_job(job, now, pending=pending, running=running, failures=failures, error=error)
            cancelled = [m.cancel_file(t) for t in self._files(c, job_id, FileState.PENDING)]
            self._save(c, job, cancelled)
            return self._totals(c, job_id)

        return await self._run(run, durable=True)

    async def cancel_job(self, job_id: str, now: float) -> Job:
        """queued | running → cancelled, with its pending and running files. A worker that later
        reports on one of those files gets :class:`InvalidTransition`."""

        def run(c: sqlite3.Connection) -> Job:
            job = m.cancel_job(self._load_job(c, job_id), now)
            files = self._files(c, job_id, FileState.PENDING) + self._files(c, job_id, FileState.RUNNING)
            self._save(c, job, [m.cancel_file(t) for t in files])
            return self._totals(c, job_id)

        return await self._run(run, durable=True)

    async def retry_job(self, job_id: str) -> Job:
        """failed → queued; its failed files go back to pending with fresh attempts."""

        def run(c: sqlite3.Connection) -> Job:
            job = m.retry_job(self._load_job(c, job_id))
            self._save(c, job, [m.retry_file(t) for t in self._files(c, job_id, FileState.FAILED)])
            return self._totals(c, job_id)

        return await self._run(run, durable=True)

    async def requeue_job(self, job_id: str, *, reason: str | None = None) -> Job:
        """running → queued (e.g. authorisation lost: ``reason="auth_needs_reauthorization"``);
        its running files go back to pending with their checkpoints, attempts not counted."""

        def run(c: sqlite3.Connection) -> Job:
            job = m.requeue_job(self._load_job(c, job_id), reason)
            self._save(c, job, [m.interrupt_file(t) for t in self._files(c, job_id, FileState.RUNNING)])
            return self._totals(c, job_id)

        return await self._run(run)

    async def set_waiting(self, job_ids: Sequence[str] | None, reason: str | None) -> int:
        """Set (or clear, with None) ``waiting_reason`` on the given queued or running jobs, or on
        every queued job when ``job_ids`` is None. All or nothing; returns how many changed."""
        if reason is not None and not (0 < len(reason) <= 100):
            raise ValueError("a waiting reason is 1..100 characters")

        def run(c: sqlite3.Connection) -> int:
            if job_ids is None:
                jobs = [_job(r) for r in c.execute(self._q["jobs_in_state"], {"state": JobState.QUEUED.value})]
            else:
                jobs = [self._load_job(c, job_id) for job_id in job_ids]
            changed = [m.set_job_waiting(j, reason) for j in jobs if j.waiting_reason != reason]
            for job in changed:
                self._save(c, job)
            return len(changed)

        return await self._run(run)

    async def counts(self) -> dict[str, int]:
        """Number of jobs in each state (every state present, zeros included)."""
        rows = await self._run(lambda c: c.execute(self._q["count_jobs"]).fetchall(), tx=False)
        out = dict.fromkeys((s.value for s in JobState), 0)
        out.update({r["state"]: r["n"] for r in rows})
        return out

    # The SHA-1 cache: a file whose path, size, mtime and inode are unchanged is not read again.

    async def cached_sha1(self, path: str, size: int, mtime_ns: int, inode: int) -> str | None:
        """The SHA-1 remembered for this exact file, or None."""
        params = {"path": str(path), "size": size, "mtime_ns": mtime_ns, "inode": inode}
        row = await self._run(lambda c: c.execute(self._q["get_sha1"], params).fetchone(), tx=False)
        return None if row is None else str(row["sha1"])

    async def remember_sha1(self, path: str, size: int, mtime_ns: int, inode: int, sha1: str) -> None:
        """Remember ``sha1`` (40 lower-case hex digits) for this file, replacing older entries."""
        if not _SHA1.fullmatch(sha1):
            raise ValueError("sha1 must be 40 lower-case hex digits")
        params = {"path": str(path), "size": size, "mtime_ns": mtime_ns, "inode": inode, "sha1": sha1}
        params["updated_at"] = time.time()
        await self._run(lambda c: c.execute(self._q["put_sha1"], params))
