"""Jobs, their file tasks and the state machine that moves them (pure: no I/O, no clock).

A job is one request of ``POST /v1/jobs`` (DESIGN §3.2); its plan is a list of file tasks,
each uploading one local file or moving one remote file to Box's trash (mirror mode)::

    job:   queued ──claim──► running ──finish──► succeeded | failed ──retry──► queued
             ▲                  │  └──requeue (crash, auth lost)──► queued
             └──────────────────┘
           queued | running ──cancel──► cancelled

    file:  pending ──start──► running ──► done | skipped | failed
              ▲                  │  └──transient failure (attempts+1 < max)──► pending
              │                  └──interrupt (crash recovery, job requeued)──► pending
           failed ──retry──► pending            pending | running ──cancel──► cancelled

The functions below are the only way a state changes: each takes a frozen object and returns
the next one, or raises :class:`InvalidTransition`. The store applies them inside one
transaction per transition.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from boxd.errors import PermanentError

MAX_PATH = 4096
MAX_NAME = 255
MAX_KEY = 200
PRIORITY_MIN, PRIORITY_MAX = -100, 100
MAX_LISTED_FAILURES = 5


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FileAction(StrEnum):
    UPLOAD = "upload"
    TRASH = "trash"  # mirror mode: a remote file that no longer exists locally


class Mode(StrEnum):
    COPY = "copy"
    MIRROR = "mirror"


class OnConflict(StrEnum):
    VERSION = "version"
    SKIP = "skip"
    FAIL = "fail"


class RequestError(PermanentError, ValueError):
    """The job request is invalid."""

    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code

    def to_api(self) -> dict[str, Any]:
        """The error body of DESIGN §3.2."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class InvalidTransition(PermanentError):
    """This state change is not allowed."""

    def __init__(self, kind: str, ident: str | int, state: str, action: str, why: str = "") -> None:
        super().__init__(f"cannot {action} {kind} {ident}: it is {state}{f' ({why})' if why else ''}")
        self.kind, self.ident, self.state, self.action = kind, ident, state, action


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job or a file failed: a stable code and a message for humans."""

    code: str
    message: str

    def to_api(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def rfc3339(ts: float | None) -> str | None:
    """``1700000000.5`` → ``"2023-11-14T22:13:20.500Z"``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id(now: float) -> str:
    """``j_`` + 12 hex digits of milliseconds + 8 random hex digits: unique, sorts by creation time."""
    return f"j_{int(now * 1000):012x}{secrets.token_hex(4)}"


# --- the request --------------------------------------------------------------------------

_FIELDS = ("source", "destination", "folder_id", "mode", "on_conflict", "idempotency_key", "priority")
_FOLDER_ID = re.compile(r"[0-9]{1,32}")
_E = TypeVar("_E", bound=StrEnum)


def _bad(name: str, message: str, code: str = "invalid_field") -> RequestError:
    return RequestError(name, code, message)


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def _string(obj: Mapping[str, Any], name: str) -> str | None:
    """The field's non-empty string value; None when absent or null."""
    value = obj.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(name, f"{name} must be a non-empty string")
    return value


def _segments(name: str, value: str) -> list[str]:
    """The path's segments without empty ones and ``.``; ``..`` and NUL refused."""
    if len(value) > MAX_PATH or "\0" in value:
        raise _bad(name, f"{name} must be at most {MAX_PATH} characters without NUL")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(name, f"{name} must not contain '..' segments")
    return parts


def _choice(obj: Mapping[str, Any], name: str, kind: type[_E], default: _E) -> _E:
    value = obj.get(name, default)
    if not isinstance(value, str) or value not in {e.value for e in kind}:
        raise _bad(name, f"{name} must be one of {'|'.join(e.value for e in kind)}")
    return kind(value)


@dataclass(frozen=True)
class JobRequest:
    """A validated ``POST /v1/jobs`` body. Paths are normalised: ``source`` is absolute,
    ``destination`` starts with ``/`` and is relative to ``box.root_folder_id`` (``/`` is that
    folder itself). Exactly one of ``destination`` and ``folder_id`` is set."""

    source: str
    destination: str | None = None
    folder_id: str | None = None
    mode: Mode = Mode.COPY
    on_conflict: OnConflict = OnConflict.VERSION
    idempotency_key: str | None = None
    priority: int = 0

    @classmethod
    def parse(cls, obj: Any) -> JobRequest:
        """Validate a decoded JSON body; :class:`RequestError` names the first bad field.

        Whether ``source`` lies under ``allowed_sources`` and whether it resolves through
        symlinks is the caller's check: it needs the file system."""
        if not isinstance(obj, dict):
            raise RequestError(None, "invalid_body", "the request body must be a JSON object")
        for name in sorted(obj):
            if name not in _FIELDS:
                raise _bad(name, f"unknown field {name!r}; known: {', '.join(_FIELDS)}", "unknown_field")
        if obj.get("source") is None:
            raise _bad("source", "source is required", "missing_field")
        source = _string(obj, "source") or ""
        if not source.startswith("/"):
            raise _bad("source", "source must be an absolute path")
        destination, folder_id = _string(obj, "destination"), _string(obj, "folder_id")
        if destination is not None:
            parts = _segments("destination", destination)
            for part in parts:  # Box's name rules (box-api-contract.md §4.1), before anything is queued
                if len(part) > MAX_NAME or "\\" in part or part != part.rstrip(" ") or _has_control(part):
                    raise _bad("destination", f"Box does not accept the folder name {part!r}")
            destination = "/" + "/".join(parts)
        if folder_id is not None and not _FOLDER_ID.fullmatch(folder_id):
            raise _bad("folder_id", "folder_id must be a Box folder id (digits)")
        if (destination is None) == (folder_id is None):
            if destination is None:
                raise _bad("destination", "give destination (a folder path) or folder_id", "missing_field")
            raise _bad("folder_id", "give destination or folder_id, not both")
        key = _string(obj, "idempotency_key")
        if key is not None and (len(key) > MAX_KEY or _has_control(key)):
            raise _bad("idempotency_key", f"idempotency_key must be at most {MAX_KEY} printable characters")
        priority = obj.get("priority", 0)
        if type(priority) is not int or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
            raise _bad("priority", f"priority must be an integer in {PRIORITY_MIN}..{PRIORITY_MAX}")
        return cls(
            source="/" + "/".join(_segments("source", source)),
            destination=destination,
            folder_id=folder_id,
            mode=_choice(obj, "mode", Mode, Mode.COPY),
            on_conflict=_choice(obj, "on_conflict", OnConflict, OnConflict.VERSION),
            idempotency_key=key,
            priority=priority,
        )

    def to_api(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- jobs and file tasks ------------------------------------------------------------------


@dataclass(frozen=True)
class FileTask:
    """One step of a job's plan. ``rel_path`` is relative to the job's source (uploads) or to
    its destination folder (trash); ``checkpoint`` is the upload session's JSON, if any;
    ``remote_id`` is the Box file to trash; ``bytes_done`` counts bytes known to be on Box."""

    rel_path: str
    size: int
    mtime_ns: int = 0
    inode: int = 0
    sha1: str | None = None
    action: FileAction = FileAction.UPLOAD
    state: FileState = FileState.PENDING
    attempts: int = 0
    box_file_id: str | None = None
    error: ErrorInfo | None = None
    checkpoint: str | None = None
    remote_id: str | None = None
    bytes_done: int = 0
    id: int = 0  # 0 until the store saved it
    job_id: str = ""

    def to_api(self) -> dict[str, Any]:
        out = {"path": self.rel_path, "action": self.action, "size": self.size, "sha1": self.sha1, "state": self.state}
        return out | {"box_file_id": self.box_file_id, "error": self.error.to_api() if self.error else None}


@dataclass(frozen=True)
class Job:
    """A job and its progress; the counters summarise its file tasks."""

    id: str
    request: JobRequest
    created_at: float
    state: JobState = JobState.QUEUED
    waiting_reason: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    files_total: int = 0
    files_done: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    error: ErrorInfo | None = None

    def to_api(self, files: Sequence[FileTask] | None = None) -> dict[str, Any]:
        """The job object of DESIGN §3.2; with ``files``, the detail view."""
        out: dict[str, Any] = {"id": self.id, "state": self.state, "waiting_reason": self.waiting_reason}
        out.update(self.request.to_api())
        out.update({k: rfc3339(getattr(self, k)) for k in ("created_at", "started_at", "finished_at")})
        counters = ("files_total", "files_done", "files_skipped", "files_failed", "bytes_total", "bytes_done")
        out.update({k: getattr(self, k) for k in ("attempts", *counters)})
        out["error"] = self.error.to_api() if self.error else None
        if files is not None:
            out["files"] = [f.to_api() for f in files]
        return out


# --- job transitions ----------------------------------------------------------------------


def _job_step(job: Job, action: str, allowed: tuple[JobState, ...], **changes: Any) -> Job:
    if job.state not in allowed:
        raise InvalidTransition("job", job.id, job.state.value, action)
    return replace(job, **changes)


def claim_job(job: Job, now: float) -> Job:
    """queued → running; counts an attempt."""
    changes = {"state": JobState.RUNNING, "started_at": now, "attempts": job.attempts + 1, "waiting_reason": None}
    return _job_step(job, "claim", (JobState.QUEUED,), **changes)


def requeue_job(job: Job, reason: str | None = None) -> Job:
    """running → queued (crash recovery, lost lease, waiting for authorisation); attempts kept."""
    return _job_step(job, "requeue", (JobState.RUNNING,), state=JobState.QUEUED, waiting_reason=reason)


def set_job_waiting(job: Job, reason: str | None) -> Job:
    """Set or clear why a queued or running job makes no progress; a waiting job is not claimed."""
    return _job_step(job, "set waiting reason of", (JobState.QUEUED, JobState.RUNNING), waiting_reason=reason)


def failure_summary(failures: Sequence[tuple[str, ErrorInfo | None]]) -> ErrorInfo:
    """The job error listing its failed files (the first few, then how many more)."""
    listed = [f"{path}: {err.message if err else 'failed'}" for path, err in failures[:MAX_LISTED_FAILURES]]
    more = len(failures) - len(listed)
    tail = f"; and {more} more" if more > 0 else ""
    noun = "file" if len(failures) == 1 else "files"
    return ErrorInfo("files_failed", f"{len(failures)} {noun} failed: {'; '.join(listed)}{tail}")


def finish_job(
    job: Job,
    now: float,
    *,
    pending: int,
    running: int,
    failures: Sequence[tuple[str, ErrorInfo | None]],
    error: ErrorInfo | None = None,
) -> Job:
    """running → succeeded, or failed when ``error`` is given or any file failed (listed).

    Without ``error`` every file must have ended; with it no file may still be running
    (the caller cancels the pending ones)."""
    if job.state is JobState.RUNNING and (running or (pending and error is None)):
        raise InvalidTransition("job", job.id, job.state.value, "finish", f"{pending + running} files unfinished")
    if error is None and failures:
        error = failure_summary(failures)
    state = JobState.FAILED if error else JobState.SUCCEEDED
    return _job_step(job, "finish", (JobState.RUNNING,), state=state, finished_at=now, waiting_reason=None, error=error)


def cancel_job(job: Job, now: float) -> Job:
    """queued | running → cancelled."""
    changes = {"state": JobState.CANCELLED, "finished_at": now, "waiting_reason": None}
    return _job_step(job, "cancel", (JobState.QUEUED, JobState.RUNNING), **changes)


def retry_job(job: Job) -> Job:
    """failed → queued; its failed files go back to pending (:func:`retry_file`)."""
    changes = {"state": JobState.QUEUED, "finished_at": None, "error": None, "waiting_reason": None}
    return _job_step(job, "retry", (JobState.FAILED,), **changes)


# --- file transitions ---------------------------------------------------------------------


def _file_step(task: FileTask, action: str, allowed: tuple[FileState, ...], **changes: Any) -> FileTask:
    if task.state not in allowed:
        raise InvalidTransition("file", task.id, task.state.value, action)
    return replace(task, **changes)


def start_file(task: FileTask) -> FileTask:
    """pending → running."""
    return _file_step(task, "start", (FileState.PENDING,), state=FileState.RUNNING)


def finish_file(
    task: FileTask,
    state: FileState,
    *,
    box_file_id: str | None = None,
    error: ErrorInfo | None = None,
    bytes_done: int | None = None,
) -> FileTask:
    """running → done | skipped (``bytes_done`` defaults to the size: the bytes are on Box)
    or failed (``bytes_done`` defaults to 0). A transient failure is :func:`fail_file_transient`."""
    if state not in (FileState.DONE, FileState.SKIPPED, FileState.FAILED):
        raise ValueError(f"finish_file ends a file as done, skipped or failed, not {state.value}")
    if bytes_done is None:
        bytes_done = 0 if state is FileState.FAILED or task.action is FileAction.TRASH else task.size
    return _file_step(
        task,
        f"finish as {state.value}",
        (FileState.RUNNING,),
        state=state,
        box_file_id=box_file_id or task.box_file_id,
        error=error if state is FileState.FAILED else None,
        bytes_done=bytes_done,
        checkpoint=None if state is not FileState.FAILED else task.checkpoint,
    )


def fail_file_transient(task: FileTask, error: ErrorInfo | None, max_attempts: int) -> FileTask:
    """running → pending with one more attempt, or failed once ``max_attempts`` are used up.
    The checkpoint is kept: the next attempt resumes the session."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    attempts = task.attempts + 1
    state = FileState.FAILED if attempts >= max_attempts else FileState.PENDING
    return _file_step(task, "retry later", (FileState.RUNNING,), state=state, attempts=attempts, error=error)


def interrupt_file(task: FileTask) -> FileTask:
    """running → pending without counting an attempt (crash recovery, job requeued)."""
    return _file_step(task, "interrupt", (FileState.RUNNING,), state=FileState.PENDING)


def cancel_file(task: FileTask) -> FileTask:
    """pending | running → cancelled."""
    return _file_step(task, "cancel", (FileState.PENDING, FileState.RUNNING), state=FileState.CANCELLED)


def retry_file(task: FileTask) -> FileTask:
    """failed → pending with a fresh attempt budget."""
    return _file_step(task, "retry", (FileState.FAILED,), state=FileState.PENDING, attempts=0, error=None)


def checkpoint_file(task: FileTask, checkpoint: str | None, bytes_done: int | None = None) -> FileTask:
    """Record upload-session progress of a pending or running file (JSON text or None)."""
    if checkpoint is not None:
        json.loads(checkpoint)  # ValueError if it is not JSON
    if bytes_done is not None and not 0 <= bytes_done <= task.size:
        raise ValueError(f"bytes_done {bytes_done} outside 0..{task.size}")
    done = task.bytes_done if bytes_done is None else bytes_done
    return _file_step(
        task, "checkpoint", (FileState.PENDING, FileState.RUNNING), checkpoint=checkpoint, bytes_done=done
    )


# --- plans --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChanges:
    """What :func:`merge_plan` does to the stored rows."""

    insert: list[FileTask]
    update: list[FileTask]
    delete: list[int]


def check_task(task: FileTask) -> None:
    """ValueError unless ``task`` may enter a plan."""
    parts = task.rel_path.split("/")
    if not task.rel_path or task.rel_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"a plan's paths are relative, without empty, '.' or '..' segments: {task.rel_path!r}")
    if "\0" in task.rel_path or task.size < 0:
        raise ValueError(f"bad plan entry {task.rel_path!r}")
    if task.state not in (FileState.PENDING, FileState.SKIPPED):
        raise ValueError(f"a plan's files are pending or skipped, not {task.state.value}")
    if task.action is FileAction.TRASH and not task.remote_id:
        raise ValueError(f"trashing {task.rel_path!r} needs the remote file's id")


def merge_plan(job_id: str, existing: Iterable[FileTask], incoming: Sequence[FileTask]) -> PlanChanges:
    """Replace a job's unfinished plan with ``incoming`` while keeping resumable work.

    - A pending row whose file is unchanged (size, mtime, inode) stays as it is, checkpoint
      and attempts included, so a re-plan after a crash resumes the saved upload session.
    - Any other matching row (same action and path) is overwritten by the new entry.
    - Pending and cancelled rows missing from ``incoming`` are deleted; finished ones are kept.

    No file may be running (:class:`InvalidTransition`); a bad entry raises ValueError.
    """
    keys: set[tuple[FileAction, str]] = set()
    for task in incoming:
        check_task(task)
        key = (task.action, task.rel_path)
        if key in keys:
            raise ValueError(f"{task.rel_path!r} appears twice in the plan")
        keys.add(key)
    old = {(t.action, t.rel_path): t for t in existing}
    busy = sum(t.state is FileState.RUNNING for t in old.values())
    if busy:
        raise InvalidTransition("job", job_id, "running", "re-plan", f"{busy} files are running")
    changes = PlanChanges([], [], [])
    for task in incoming:
        settled = task.state is FileState.SKIPPED and task.action is FileAction.UPLOAD
        fresh = replace(task, job_id=job_id, attempts=0, error=None, checkpoint=None, id=0)
        fresh = replace(fresh, bytes_done=task.size if settled else 0)
        row = old.get((task.action, task.rel_path))
        if row is None:
            changes.insert.append(fresh)
        elif (
            row.state is FileState.PENDING
            and task.state is FileState.PENDING
            and (row.size, row.mtime_ns, row.inode) == (task.size, task.mtime_ns, task.inode)
        ):
            kept = replace(
                row,
                sha1=task.sha1 or row.sha1,
                box_file_id=task.box_file_id or row.box_file_id,
                remote_id=task.remote_id or row.remote_id,
            )
            if kept != row:
                changes.update.append(kept)
        else:
            changes.update.append(replace(fresh, id=row.id))
    for key, row in old.items():
        if key not in keys and row.state in (FileState.PENDING, FileState.CANCELLED):
            changes.delete.append(row.id)
    return changes
