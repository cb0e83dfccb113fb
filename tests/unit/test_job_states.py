"""The job and file state machines, the request validator and plan merging: pure, no store."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from boxd.jobs import models as m
from boxd.jobs.models import ErrorInfo, FileAction, FileState, FileTask, InvalidTransition, Job, JobRequest, JobState

REQ = JobRequest(source="/srv/backup", destination="/Backups/host1")
BOOM = ErrorInfo("boom", "it broke")


def job(state: JobState = JobState.QUEUED, **kw: Any) -> Job:
    return replace(Job(id="j_1", request=REQ, created_at=100.0), state=state, **kw)


def task(state: FileState = FileState.PENDING, **kw: Any) -> FileTask:
    return replace(
        FileTask(rel_path="data/pack", size=1000, mtime_ns=5, inode=7, id=1, job_id="j_1"), state=state, **kw
    )


# --- jobs ---------------------------------------------------------------------------------

JOB_ACTIONS: dict[str, tuple[Callable[[Job], Job], set[JobState]]] = {
    "claim": (lambda j: m.claim_job(j, 200.0), {JobState.QUEUED}),
    "requeue": (lambda j: m.requeue_job(j, "auth_needs_reauthorization"), {JobState.RUNNING}),
    "wait": (lambda j: m.set_job_waiting(j, "rate_limited"), {JobState.QUEUED, JobState.RUNNING}),
    "finish": (lambda j: m.finish_job(j, 300.0, pending=0, running=0, failures=[]), {JobState.RUNNING}),
    "cancel": (lambda j: m.cancel_job(j, 300.0), {JobState.QUEUED, JobState.RUNNING}),
    "retry": (m.retry_job, {JobState.FAILED}),
}
ILLEGAL_JOB = [(a, s) for a, (_, ok) in JOB_ACTIONS.items() for s in JobState if s not in ok]


@pytest.mark.parametrize(("action", "state"), ILLEGAL_JOB)
def test_an_illegal_job_transition_raises_and_names_the_state(action: str, state: JobState) -> None:
    with pytest.raises(InvalidTransition) as info:
        JOB_ACTIONS[action][0](job(state))
    assert info.value.state == state.value and info.value.kind == "job"
    assert state.value in str(info.value)


def test_claim_moves_a_queued_job_to_running_and_counts_an_attempt() -> None:
    claimed = m.claim_job(job(attempts=2), 200.0)
    assert (claimed.state, claimed.started_at, claimed.attempts) == (JobState.RUNNING, 200.0, 3)


def test_requeue_keeps_attempts_and_records_why_the_job_waits() -> None:
    back = m.requeue_job(job(JobState.RUNNING, attempts=3), "auth_needs_reauthorization")
    assert (back.state, back.attempts, back.waiting_reason) == (JobState.QUEUED, 3, "auth_needs_reauthorization")
    assert m.requeue_job(job(JobState.RUNNING)).waiting_reason is None


def test_waiting_reason_is_set_and_cleared_on_active_jobs() -> None:
    waiting = m.set_job_waiting(job(), "rate_limited")
    assert waiting.waiting_reason == "rate_limited"
    assert m.set_job_waiting(waiting, None).waiting_reason is None


def test_a_job_whose_files_all_ended_well_succeeds() -> None:
    done = m.finish_job(job(JobState.RUNNING, waiting_reason="x"), 300.0, pending=0, running=0, failures=[])
    assert (done.state, done.finished_at, done.error, done.waiting_reason) == (JobState.SUCCEEDED, 300.0, None, None)


def test_a_job_with_a_failed_file_fails_listing_the_errors() -> None:
    failures = [(f"f{i}", ErrorInfo("x", f"reason {i}")) for i in range(8)]
    failed = m.finish_job(job(JobState.RUNNING), 300.0, pending=0, running=0, failures=failures)
    assert failed.state is JobState.FAILED and failed.error is not None
    assert failed.error.code == "files_failed"
    assert failed.error.message.startswith("8 files failed: f0: reason 0; f1: reason 1")
    assert failed.error.message.endswith("; and 3 more") and "f5" not in failed.error.message
    one = m.finish_job(job(JobState.RUNNING), 300.0, pending=0, running=0, failures=[("a", None)])
    assert one.error == ErrorInfo("files_failed", "1 file failed: a: failed")


def test_a_job_with_unfinished_files_cannot_finish_unless_it_failed_as_a_whole() -> None:
    with pytest.raises(InvalidTransition, match="2 files unfinished"):
        m.finish_job(job(JobState.RUNNING), 300.0, pending=2, running=0, failures=[])
    with pytest.raises(InvalidTransition):
        m.finish_job(job(JobState.RUNNING), 300.0, pending=0, running=1, failures=[], error=BOOM)
    failed = m.finish_job(job(JobState.RUNNING), 300.0, pending=5, running=0, failures=[], error=BOOM)
    assert (failed.state, failed.error) == (JobState.FAILED, BOOM)


def test_cancel_and_retry() -> None:
    for state in (JobState.QUEUED, JobState.RUNNING):
        cancelled = m.cancel_job(job(state, waiting_reason="w"), 300.0)
        assert (cancelled.state, cancelled.finished_at, cancelled.waiting_reason) == (JobState.CANCELLED, 300.0, None)
    again = m.retry_job(job(JobState.FAILED, finished_at=300.0, error=BOOM, attempts=2))
    assert (again.state, again.finished_at, again.error, again.attempts) == (JobState.QUEUED, None, None, 2)


# --- files --------------------------------------------------------------------------------

FILE_ACTIONS: dict[str, tuple[Callable[[FileTask], FileTask], set[FileState]]] = {
    "start": (m.start_file, {FileState.PENDING}),
    "done": (lambda t: m.finish_file(t, FileState.DONE, box_file_id="9"), {FileState.RUNNING}),
    "skipped": (lambda t: m.finish_file(t, FileState.SKIPPED), {FileState.RUNNING}),
    "failed": (lambda t: m.finish_file(t, FileState.FAILED, error=BOOM), {FileState.RUNNING}),
    "transient": (lambda t: m.fail_file_transient(t, BOOM, 5), {FileState.RUNNING}),
    "interrupt": (m.interrupt_file, {FileState.RUNNING}),
    "cancel": (m.cancel_file, {FileState.PENDING, FileState.RUNNING}),
    "retry": (m.retry_file, {FileState.FAILED}),
    "checkpoint": (lambda t: m.checkpoint_file(t, "{}"), {FileState.PENDING, FileState.RUNNING}),
}
ILLEGAL_FILE = [(a, s) for a, (_, ok) in FILE_ACTIONS.items() for s in FileState if s not in ok]
LEGAL_FILE = [(a, s) for a, (_, ok) in FILE_ACTIONS.items() for s in ok]


@pytest.mark.parametrize(("action", "state"), ILLEGAL_FILE)
def test_an_illegal_file_transition_raises(action: str, state: FileState) -> None:
    with pytest.raises(InvalidTransition) as info:
        FILE_ACTIONS[action][0](task(state))
    assert (info.value.kind, info.value.state) == ("file", state.value)


@pytest.mark.parametrize(("action", "state"), LEGAL_FILE)
def test_every_legal_file_transition_is_allowed(action: str, state: FileState) -> None:
    assert isinstance(FILE_ACTIONS[action][0](task(state)), FileTask)


def test_start_and_finish_a_file() -> None:
    running = m.start_file(task())
    assert running.state is FileState.RUNNING
    done = m.finish_file(replace(running, checkpoint="{}"), FileState.DONE, box_file_id="9")
    assert (done.state, done.box_file_id, done.bytes_done, done.checkpoint) == (FileState.DONE, "9", 1000, None)
    assert m.finish_file(running, FileState.SKIPPED).bytes_done == 1000
    trashed = m.finish_file(replace(running, action=FileAction.TRASH), FileState.DONE)
    assert trashed.bytes_done == 0
    failed = m.finish_file(replace(running, bytes_done=300, checkpoint="{}"), FileState.FAILED, error=BOOM)
    assert (failed.error, failed.bytes_done, failed.checkpoint) == (BOOM, 0, "{}")
    assert m.finish_file(running, FileState.DONE, error=BOOM).error is None


def test_finish_file_only_ends_a_file() -> None:
    for state in (FileState.PENDING, FileState.RUNNING, FileState.CANCELLED):
        with pytest.raises(ValueError, match="not"):
            m.finish_file(task(FileState.RUNNING), state)


def test_a_transient_failure_retries_until_max_attempts_then_fails() -> None:
    t = task(FileState.RUNNING, checkpoint='{"s": 1}')
    for attempt in (1, 2):
        t = m.fail_file_transient(t, BOOM, 3)
        assert (t.state, t.attempts, t.error, t.checkpoint) == (FileState.PENDING, attempt, BOOM, '{"s": 1}')
        t = m.start_file(t)
    t = m.fail_file_transient(t, BOOM, 3)
    assert (t.state, t.attempts) == (FileState.FAILED, 3)
    with pytest.raises(ValueError):
        m.fail_file_transient(task(FileState.RUNNING), BOOM, 0)


def test_interrupt_keeps_attempts_and_checkpoint_and_retry_resets_attempts() -> None:
    t = m.interrupt_file(task(FileState.RUNNING, attempts=2, checkpoint="{}"))
    assert (t.state, t.attempts, t.checkpoint) == (FileState.PENDING, 2, "{}")
    again = m.retry_file(task(FileState.FAILED, attempts=5, error=BOOM))
    assert (again.state, again.attempts, again.error) == (FileState.PENDING, 0, None)


def test_a_checkpoint_is_json_and_progress_lies_within_the_file() -> None:
    t = m.checkpoint_file(task(), '{"session": "S"}', 500)
    assert (t.checkpoint, t.bytes_done) == ('{"session": "S"}', 500)
    assert m.checkpoint_file(t, None).bytes_done == 500
    with pytest.raises(ValueError):
        m.checkpoint_file(task(), "not json")
    with pytest.raises(ValueError):
        m.checkpoint_file(task(), None, 1001)


# --- plans --------------------------------------------------------------------------------


def planned(path: str, **kw: Any) -> FileTask:
    return FileTask(rel_path=path, size=kw.pop("size", 10), mtime_ns=1, inode=1, **kw)


def test_merge_keeps_resumable_work_and_replaces_the_rest() -> None:
    existing = [
        replace(planned("same", checkpoint="{}", attempts=2), id=1, job_id="j"),
        replace(planned("changed", checkpoint="{}"), id=2, job_id="j"),
        replace(planned("gone"), id=3, job_id="j"),
        replace(planned("done_before", state=FileState.DONE), id=4, job_id="j"),
        replace(planned("done_gone", state=FileState.DONE), id=5, job_id="j"),
        replace(planned("cancelled_gone", state=FileState.CANCELLED), id=6, job_id="j"),
    ]
    incoming = [
        planned("same", sha1="a" * 40),
        planned("changed", size=11),
        planned("done_before", state=FileState.SKIPPED),
        planned("new"),
        planned("old/remote", action=FileAction.TRASH, remote_id="77"),
    ]
    changes = m.merge_plan("j", existing, incoming)
    updates = {t.rel_path: t for t in changes.update}
    assert updates["same"] == replace(existing[0], sha1="a" * 40)  # checkpoint and attempts kept
    assert (updates["changed"].size, updates["changed"].checkpoint, updates["changed"].id) == (11, None, 2)
    assert (updates["done_before"].state, updates["done_before"].bytes_done) == (FileState.SKIPPED, 10)
    assert [t.rel_path for t in changes.insert] == ["new", "old/remote"]
    assert all(t.job_id == "j" and t.id == 0 for t in changes.insert)
    assert sorted(changes.delete) == [3, 6]
    unchanged = m.merge_plan("j", existing[:1], [planned("same")])
    assert unchanged == m.PlanChanges([], [], [])


@pytest.mark.parametrize(
    "entry",
    [
        planned(""),
        planned("/abs"),
        planned("a/../b"),
        planned("a//b"),
        planned("./a"),
        planned("a", size=-1),
        planned("a", state=FileState.DONE),
        planned("a", action=FileAction.TRASH),
    ],
)
def test_merge_refuses_a_bad_plan_entry(entry: FileTask) -> None:
    with pytest.raises(ValueError):
        m.merge_plan("j", [], [entry])


def test_merge_refuses_duplicates_and_running_files() -> None:
    with pytest.raises(ValueError, match="twice"):
        m.merge_plan("j", [], [planned("a"), planned("a")])
    with pytest.raises(InvalidTransition):
        m.merge_plan("j", [planned("a", state=FileState.RUNNING)], [planned("b")])


# --- the request --------------------------------------------------------------------------


def test_a_minimal_request_gets_the_defaults_and_normalised_paths() -> None:
    req = JobRequest.parse({"source": "/srv//backup/./repo/", "destination": "Backups//host1/"})
    assert req == JobRequest(source="/srv/backup/repo", destination="/Backups/host1")
    assert (req.mode, req.on_conflict, req.priority, req.idempotency_key) == ("copy", "version", 0, None)
    assert JobRequest.parse({"source": "/a", "destination": "/"}).destination == "/"
    full = {
        "source": "/a",
        "folder_id": "123",
        "destination": None,
        "mode": "mirror",
        "on_conflict": "fail",
        "idempotency_key": "pluton-plan-7-run-42",
        "priority": -100,
    }
    assert JobRequest.parse(full).to_api() == full


BAD_REQUESTS: list[tuple[Any, str | None, str]] = [
    ([], None, "invalid_body"),
    ("x", None, "invalid_body"),
    ({"source": "/a", "destination": "/b", "sorce": "/a"}, "sorce", "unknown_field"),
    ({"destination": "/b"}, "source", "missing_field"),
    ({"source": None, "destination": "/b"}, "source", "missing_field"),
    ({"source": 5, "destination": "/b"}, "source", "invalid_field"),
    ({"source": "", "destination": "/b"}, "source", "invalid_field"),
    ({"source": "srv/a", "destination": "/b"}, "source", "invalid_field"),
    ({"source": "/srv/../etc", "destination": "/b"}, "source", "invalid_field"),
    ({"source": "/srv/a\0", "destination": "/b"}, "source", "invalid_field"),
    ({"source": "/" + "a" * 5000, "destination": "/b"}, "source", "invalid_field"),
    ({"source": "/a"}, "destination", "missing_field"),
    ({"source": "/a", "destination": None, "folder_id": None}, "destination", "missing_field"),
    ({"source": "/a", "destination": "/b", "folder_id": "1"}, "folder_id", "invalid_field"),
    ({"source": "/a", "destination": ""}, "destination", "invalid_field"),
    ({"source": "/a", "destination": ["b"]}, "destination", "invalid_field"),
    ({"source": "/a", "destination": "/b/../c"}, "destination", "invalid_field"),
    ({"source": "/a", "destination": "/b /c"}, "destination", "invalid_field"),
    ({"source": "/a", "destination": "/b\\c"}, "destination", "invalid_field"),
    ({"source": "/a", "destination": "/b\nc"}, "destination", "invalid_field"),
    ({"source": "/a", "destination": "/" + "b" * 256}, "destination", "invalid_field"),
    ({"source": "/a", "folder_id": 12}, "folder_id", "invalid_field"),
    ({"source": "/a", "folder_id": ""}, "folder_id", "invalid_field"),
    ({"source": "/a", "folder_id": "12a"}, "folder_id", "invalid_field"),
    ({"source": "/a", "destination": "/b", "mode": "sync"}, "mode", "invalid_field"),
    ({"source": "/a", "destination": "/b", "mode": None}, "mode", "invalid_field"),
    ({"source": "/a", "destination": "/b", "mode": "COPY"}, "mode", "invalid_field"),
    ({"source": "/a", "destination": "/b", "on_conflict": "overwrite"}, "on_conflict", "invalid_field"),
    ({"source": "/a", "destination": "/b", "on_conflict": 1}, "on_conflict", "invalid_field"),
    ({"source": "/a", "destination": "/b", "idempotency_key": "k" * 201}, "idempotency_key", "invalid_field"),
    ({"source": "/a", "destination": "/b", "idempotency_key": ""}, "idempotency_key", "invalid_field"),
    ({"source": "/a", "destination": "/b", "idempotency_key": 7}, "idempotency_key", "invalid_field"),
    ({"source": "/a", "destination": "/b", "idempotency_key": "a\tb"}, "idempotency_key", "invalid_field"),
    ({"source": "/a", "destination": "/b", "priority": "1"}, "priority", "invalid_field"),
    ({"source": "/a", "destination": "/b", "priority": 1.5}, "priority", "invalid_field"),
    ({"source": "/a", "destination": "/b", "priority": True}, "priority", "invalid_field"),
    ({"source": "/a", "destination": "/b", "priority": 101}, "priority", "invalid_field"),
    ({"source": "/a", "destination": "/b", "priority": -101}, "priority", "invalid_field"),
]


@pytest.mark.parametrize(("body", "field", "code"), BAD_REQUESTS)
def test_a_bad_request_is_refused_naming_the_field(body: Any, field: str | None, code: str) -> None:
    with pytest.raises(m.RequestError) as info:
        JobRequest.parse(body)
    assert (info.value.field, info.value.code) == (field, code)
    assert info.value.to_api() == {"error": {"code": code, "message": info.value.message, "field": field}}


def test_the_longest_key_and_the_priority_bounds_are_accepted() -> None:
    base = {"source": "/a", "destination": "/b"}
    assert JobRequest.parse({**base, "idempotency_key": "k" * 200}).idempotency_key == "k" * 200
    assert JobRequest.parse({**base, "priority": 100}).priority == 100


# --- API shapes ---------------------------------------------------------------------------


def test_the_job_object_has_the_fields_of_design_3_2() -> None:
    j = job(JobState.FAILED, started_at=101.25, error=BOOM)
    out = j.to_api()
    assert set(out) == {
        "id", "state", "waiting_reason", "source", "destination", "folder_id", "mode", "on_conflict",
        "idempotency_key", "priority", "created_at", "started_at", "finished_at", "attempts", "files_total",
        "files_done", "files_skipped", "files_failed", "bytes_total", "bytes_done", "error",
    }  # fmt: skip
    assert (out["created_at"], out["started_at"], out["finished_at"]) == (
        "1970-01-01T00:01:40.000Z",
        "1970-01-01T00:01:41.250Z",
        None,
    )
    assert out["error"] == {"code": "boom", "message": "it broke"} and out["state"] == "failed"
    detail = j.to_api([task(FileState.FAILED, error=BOOM, sha1="a" * 40)])
    assert detail["files"] == [
        {
            "path": "data/pack",
            "action": "upload",
            "size": 1000,
            "sha1": "a" * 40,
            "state": "failed",
            "box_file_id": None,
            "error": {"code": "boom", "message": "it broke"},
        }
    ]
    json.dumps(detail)


def test_job_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [m.new_job_id(t) for t in (1.0, 1.0, 2.5, 1_800_000_000.0)]
    assert len(set(ids)) == 4 and ids[2:] == sorted(ids[2:]) and ids[0] < ids[2]
    assert all(i.startswith("j_") and len(i) == 22 for i in ids)
