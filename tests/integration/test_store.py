"""The SQLite job store on real files: migrations, transitions, recovery, a real kill -9."""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from boxd.jobs import store as store_module
from boxd.jobs.models import ErrorInfo, FileAction, FileState, FileTask, InvalidTransition, JobRequest, JobState
from boxd.jobs.store import (
    JobStore,
    NotFoundError,
    Store,
    StoreBusyError,
    StoreError,
    migrations,
    parse_queries,
    split_script,
)

pytestmark = pytest.mark.anyio
BOOM = ErrorInfo("boom", "it broke")


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """Fail any test in which SQLite or file I/O runs on the event-loop thread."""
    try:
        from blockbuster import blockbuster_ctx
    except ImportError:  # not a declared dependency; the thread test below still holds
        yield
        return
    with blockbuster_ctx():
        yield


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "boxd.db"


@pytest.fixture
async def store(db: Path) -> AsyncIterator[Store]:
    await anyio.to_thread.run_sync(lambda: db.parent.mkdir())
    s = await Store.open(db)
    yield s
    await s.close()


def req(source: str = "/srv/a", **kw: Any) -> JobRequest:
    return JobRequest.parse({"source": source, "destination": "/Backups", **kw})


def plan(*paths: str, size: int = 100) -> list[FileTask]:
    return [FileTask(rel_path=p, size=size, mtime_ns=1, inode=i) for i, p in enumerate(paths)]


async def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file with a connection of its own, off the loop."""

    def run() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(run)


async def running_job(store: Store, *paths: str) -> tuple[str, list[FileTask]]:
    """A claimed job with a plan of ``paths``."""
    job, _ = await store.create_job(req(idempotency_key=None))
    claimed = await store.claim_next_job(200.0)
    assert claimed is not None and claimed.id == job.id
    await store.set_plan(job.id, plan(*paths))
    return job.id, await store.job_files(job.id)


async def test_a_fresh_file_gets_every_migration_and_reopening_changes_nothing(store: Store, db: Path) -> None:
    expected = [(v, n) for v, n, _ in migrations()]
    assert await query(db, "SELECT version, name FROM schema_version ORDER BY version") == expected
    assert await query(db, "PRAGMA journal_mode") == [("wal",)]
    await store.create_job(req())
    await store.close()
    again = await Store.open(db)
    assert await query(db, "SELECT version, name FROM schema_version ORDER BY version") == expected
    assert len(await again.list_jobs()) == 1
    await again.close()


async def test_a_database_newer_than_this_boxd_is_refused(store: Store, db: Path) -> None:
    await store.close()

    def bump() -> None:
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")

    await anyio.to_thread.run_sync(bump)
    with pytest.raises(StoreError, match="schema version 999"):
        await Store.open(db)


async def test_an_unusable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        await Store.open(tmp_path / "missing-dir" / "boxd.db")
    with pytest.raises(StoreError):
        await Store.open(tmp_path)


async def test_an_idempotency_key_returns_the_existing_job(store: Store) -> None:
    first, created = await store.create_job(req(idempotency_key="plan-7-run-42"))
    again, created_again = await store.create_job(req("/srv/other", idempotency_key="plan-7-run-42"))
    assert (created, created_again) == (True, False)
    assert again == first and again.request.source == "/srv/a"
    other, created_other = await store.create_job(req(idempotency_key="plan-7-run-43"))
    plain = [await store.create_job(req()) for _ in range(2)]
    assert created_other and other.id != first.id and all(c for _, c in plain)
    assert len({j.id for j in await store.list_jobs()}) == 4


async def test_jobs_are_listed_newest_first_and_by_state(store: Store) -> None:
    ids = [(await store.create_job(req(), now=float(t)))[0].id for t in (1, 3, 2)]
    assert [j.id for j in await store.list_jobs()] == [ids[1], ids[2], ids[0]]
    assert [j.id for j in await store.list_jobs(limit=1)] == [ids[1]]
    await store.cancel_job(ids[0], 10.0)
    assert [j.id for j in await store.list_jobs(JobState.CANCELLED)] == [ids[0]]
    assert await store.get_job("j_nope") is None and await store.job_files("j_nope") == []
    for limit in (0, 1001):
        with pytest.raises(ValueError):
            await store.list_jobs(limit=limit)


async def test_claims_go_by_priority_then_age_and_skip_waiting_jobs(store: Store) -> None:
    old_low = (await store.create_job(req(priority=-5), now=1.0))[0]
    new_high = (await store.create_job(req(priority=10), now=5.0))[0]
    old_high = (await store.create_job(req(priority=10), now=2.0))[0]
    mid = (await store.create_job(req(), now=3.0))[0]
    assert await store.set_waiting([old_high.id], "auth_needs_reauthorization") == 1
    order = [await store.claim_next_job(100.0) for _ in range(3)]
    assert [j.id for j in order if j] == [new_high.id, mid.id, old_low.id]
    assert await store.claim_next_job(100.0) is None  # the waiting one waits
    assert await store.set_waiting(None, None) == 1  # clears every queued job
    claimed = await store.claim_next_job(101.0)
    assert claimed is not None and claimed.id == old_high.id
    assert (claimed.state, claimed.attempts, claimed.started_at) == (JobState.RUNNING, 1, 101.0)


async def test_set_waiting_is_all_or_nothing(store: Store) -> None:
    job, _ = await store.create_job(req())
    with pytest.raises(NotFoundError):
        await store.set_waiting([job.id, "j_nope"], "rate_limited")
    done = (await store.create_job(req()))[0]
    await store.cancel_job(done.id, 5.0)
    with pytest.raises(InvalidTransition):
        await store.set_waiting([job.id, done.id], "rate_limited")
    with pytest.raises(ValueError):
        await store.set_waiting(None, "")
    assert (await store.get_job(job.id)) == job


async def test_recover_after_a_crash_requeues_the_job_and_keeps_the_checkpoint(db: Path, store: Store) -> None:
    job_id, files = await running_job(store, "big.tar", "small")
    await store.start_file(files[0].id)
    await store.save_checkpoint(files[0].id, '{"session": "S1", "parts": [0, 1]}', bytes_done=60)
    await store.close()  # the daemon dies: nothing finished

    reopened = await Store.open(db)
    recovered = await reopened.recover()
    assert [(j.id, j.state, j.attempts, j.bytes_done) for j in recovered] == [(job_id, JobState.QUEUED, 1, 60)]
    big = (await reopened.job_files(job_id))[0]
    assert (big.state, big.attempts, big.checkpoint) == (FileState.PENDING, 0, '{"session": "S1", "parts": [0, 1]}')
    assert await reopened.recover() == []
    claimed = await reopened.claim_next_job(300.0)
    assert claimed is not None and claimed.attempts == 2
    # Re-planning the unchanged file keeps its session; the caller resumes it.
    await reopened.set_plan(job_id, plan("big.tar", "small"))
    assert (await reopened.pending_files(job_id, 1))[0].checkpoint == big.checkpoint
    await reopened.close()


CHILD = """
import os, signal, sys
import anyio
from boxd.jobs.models import JobRequest
from boxd.jobs.store import Store

async def main() -> None:
    store = await Store.open(sys.argv[1])
    job, _ = await store.create_job(JobRequest.parse({"source": "/srv/a", "folder_id": "0"}))
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def test_an_accepted_job_survives_kill_9_right_after_create_job(db: Path) -> None:
    await anyio.to_thread.run_sync(lambda: db.parent.mkdir())
    result = await anyio.run_process([sys.executable, "-c", CHILD, str(db)], check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr
    job_id = result.stdout.decode().strip()
    store = await Store.open(db)
    job = await store.get_job(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.request.folder_id == "0"
    await store.close()


async def test_finish_succeeds_when_every_file_ended_well_and_totals_follow(store: Store) -> None:
    job_id, files = await running_job(store, "a", "b", "c")
    job = await store.get_job(job_id)
    assert job is not None and (job.files_total, job.bytes_total, job.bytes_done) == (3, 300, 0)
    with pytest.raises(InvalidTransition, match="unfinished"):
        await store.finish_job(job_id, 300.0)
    for f, state in zip(files, (FileState.DONE, FileState.SKIPPED, FileState.DONE), strict=True):
        await store.start_file(f.id)
        await store.finish_file(f.id, state, box_file_id="9" if state is FileState.DONE else None)
    done = await store.finish_job(job_id, 300.0)
    assert (done.state, done.finished_at, done.error) == (JobState.SUCCEEDED, 300.0, None)
    counters = (done.files_total, done.files_done, done.files_skipped, done.files_failed, done.bytes_done)
    assert counters == (3, 2, 1, 0, 300)
    assert (await store.counts()) == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}


async def test_a_failed_file_fails_the_job_and_retry_runs_it_again(store: Store) -> None:
    job_id, (a, b) = await running_job(store, "a", "b")
    await store.start_file(a.id)
    await store.finish_file(a.id, FileState.DONE)
    await store.start_file(b.id)
    for _ in range(2):  # transient failures until max_attempts
        b = await store.finish_file(b.id, FileState.PENDING, error=BOOM, max_attempts=2, bytes_done=40)
        if b.state is FileState.PENDING:
            await store.start_file(b.id)
    assert (b.state, b.attempts, b.bytes_done) == (FileState.FAILED, 2, 40)
    failed = await store.finish_job(job_id, 300.0)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error.message == "1 file failed: b: it broke" and failed.files_failed == 1
    with pytest.raises(InvalidTransition):
        await store.cancel_job(job_id, 301.0)
    again = await store.retry_job(job_id)
    assert (again.state, again.error, again.finished_at, again.files_failed) == (JobState.QUEUED, None, None, 0)
    states = [(f.rel_path, f.state, f.attempts) for f in await store.job_files(job_id)]
    assert states == [("a", FileState.DONE, 0), ("b", FileState.PENDING, 0)]
    with pytest.raises(InvalidTransition):
        await store.retry_job(job_id)


async def test_a_job_level_error_fails_the_job_and_cancels_its_pending_files(store: Store) -> None:
    job_id, files = await running_job(store, "a", "b")
    await store.start_file(files[0].id)
    refusal = ErrorInfo("mirror_refused", "would delete 90% of the remote files")
    with pytest.raises(InvalidTransition):  # a file is still running
        await store.finish_job(job_id, 300.0, error=refusal)
    await store.finish_file(files[0].id, FileState.CANCELLED)
    failed = await store.finish_job(job_id, 300.0, error=refusal)
    assert (failed.state, failed.error) == (JobState.FAILED, refusal)
    assert {f.state for f in await store.job_files(job_id)} == {FileState.CANCELLED}


async def test_cancel_stops_the_job_and_its_files_and_late_reports_are_refused(store: Store) -> None:
    job_id, (a, b) = await running_job(store, "a", "b")
    queued, _ = await store.create_job(req())
    await store.start_file(a.id)
    cancelled = await store.cancel_job(job_id, 300.0)
    assert (cancelled.state, cancelled.finished_at) == (JobState.CANCELLED, 300.0)
    assert [f.state for f in await store.job_files(job_id)] == [FileState.CANCELLED, FileState.CANCELLED]
    with pytest.raises(InvalidTransition):
        await store.finish_file(a.id, FileState.DONE)
    with pytest.raises(InvalidTransition):
        await store.start_file(b.id)
    with pytest.raises(InvalidTransition):
        await store.cancel_job(job_id, 301.0)
    assert (await store.get_job(job_id)) == cancelled
    assert (await store.cancel_job(queued.id, 302.0)).state is JobState.CANCELLED
    with pytest.raises(NotFoundError):
        await store.cancel_job("j_nope", 1.0)


async def test_a_requeued_job_keeps_its_progress(store: Store) -> None:
    job_id, (a, _) = await running_job(store, "a", "b")
    await store.start_file(a.id)
    await store.save_checkpoint(a.id, '{"s": 1}')
    back = await store.requeue_job(job_id, reason="auth_needs_reauthorization")
    assert (back.state, back.waiting_reason) == (JobState.QUEUED, "auth_needs_reauthorization")
    assert (await store.job_files(job_id))[0].checkpoint == '{"s": 1}'
    assert await store.claim_next_job(400.0) is None
    assert await store.set_waiting([job_id], None) == 1
    assert await store.claim_next_job(400.0) is not None


async def test_set_plan_merges_and_bad_input_changes_nothing(store: Store) -> None:
    job_id, _ = await running_job(store, "a", "b")
    before = await store.job_files(job_id)
    with pytest.raises(ValueError):
        await store.set_plan(job_id, [*plan("a", "c"), FileTask(rel_path="../x", size=1)])
    with pytest.raises(ValueError):
        await store.save_checkpoint(before[0].id, "{not json")
    assert await store.job_files(job_id) == before
    trash = FileTask(rel_path="old", size=5, action=FileAction.TRASH, remote_id="77")
    job = await store.set_plan(job_id, [*plan("a", "c", size=10), trash])
    assert [(f.rel_path, f.action) for f in await store.job_files(job_id)] == [
        ("a", FileAction.UPLOAD),
        ("c", FileAction.UPLOAD),
        ("old", FileAction.TRASH),
    ]
    assert (job.files_total, job.bytes_total) == (3, 20)  # trashing moves no bytes
    queued, _ = await store.create_job(req())
    with pytest.raises(InvalidTransition):
        await store.set_plan(queued.id, plan("a"))


async def test_the_sha1_cache_answers_only_for_an_unchanged_file(store: Store) -> None:
    path, sha = "/srv/a/pack", "a" * 40
    assert await store.cached_sha1(path, 10, 5, 7) is None
    await store.remember_sha1(path, 10, 5, 7, sha)
    assert await store.cached_sha1(path, 10, 5, 7) == sha
    for changed in ((11, 5, 7), (10, 6, 7), (10, 5, 8)):
        assert await store.cached_sha1(path, *changed) is None
    await store.remember_sha1(path, 11, 6, 7, "b" * 40)
    assert await store.cached_sha1(path, 11, 6, 7) == "b" * 40
    assert await store.cached_sha1(path, 10, 5, 7) is None
    with pytest.raises(ValueError):
        await store.remember_sha1(path, 1, 1, 1, "XYZ")


async def test_a_locked_database_is_a_transient_error(db: Path) -> None:
    await anyio.to_thread.run_sync(lambda: db.parent.mkdir())
    store = await Store.open(db, busy_timeout=0.05)
    other = await anyio.to_thread.run_sync(lambda: sqlite3.connect(db, isolation_level=None, check_same_thread=False))
    await anyio.to_thread.run_sync(other.execute, "BEGIN EXCLUSIVE")
    with pytest.raises(StoreBusyError) as info:
        await store.create_job(req())
    assert not isinstance(info.value.__cause__, StoreBusyError)
    await anyio.to_thread.run_sync(other.execute, "ROLLBACK")
    await anyio.to_thread.run_sync(other.close)
    assert (await store.create_job(req()))[1]
    await store.close()


async def test_a_closed_store_refuses_calls(store: Store) -> None:
    await store.close()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.counts()


async def test_sqlite_runs_on_a_worker_thread_never_the_loop(store: Store) -> None:
    threads: set[int] = set()
    statements: list[str] = []
    conn = store._conn  # the test peeks at the connection to see where statements run
    assert conn is not None

    def trace(sql: str) -> None:
        threads.add(threading.get_ident())
        statements.append(sql.rstrip(";"))

    conn.set_trace_callback(trace)
    _, files = await running_job(store, "a")
    await store.start_file(files[0].id)
    await store.counts()
    assert threads and threading.get_ident() not in threads
    # The accepted job was committed with an fsync of the WAL; progress writes were not.
    assert statements[:2] == ["PRAGMA synchronous = FULL", "BEGIN IMMEDIATE"]
    assert statements.index("COMMIT") < statements.index("PRAGMA synchronous = NORMAL")
    assert statements.count("PRAGMA synchronous = FULL") == 1


async def test_the_guard_catches_sqlite_on_the_loop(tmp_path: Path) -> None:
    blockbuster = pytest.importorskip("blockbuster")
    conn = await anyio.to_thread.run_sync(sqlite3.connect, tmp_path / "x.db")
    with pytest.raises(blockbuster.BlockingError):
        conn.execute("SELECT 1")
    await anyio.to_thread.run_sync(conn.close)


def test_the_sqlite_store_is_a_job_store() -> None:
    port: type[JobStore] = Store  # checked by mypy
    assert port is Store


def test_every_named_query_parses_and_is_used() -> None:
    sql = Path(store_module.__file__).parent / "sql" / "queries.sql"
    queries = parse_queries(sql.read_text("utf-8"))
    code = Path(store_module.__file__).read_text("utf-8")
    assert [name for name in queries if f'"{name}"' not in code] == []
    assert all(not q.startswith("--") for q in queries.values())
    with pytest.raises(StoreError, match="duplicated"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_migrations_split_into_statements_triggers_included() -> None:
    script = (
        "-- a table\nCREATE TABLE t (x INTEGER);\n"
        "CREATE TRIGGER g AFTER INSERT ON t BEGIN\n  UPDATE t SET x = 1;\nEND;\n-- trailing note\n"
    )
    assert [s.splitlines()[-1] for s in split_script(script)] == ["CREATE TABLE t (x INTEGER);", "END;"]
    with pytest.raises(StoreError, match="incomplete"):
        split_script("CREATE TABLE t (x INTEGER)")
