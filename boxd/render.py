"""Rendering the control API's JSON for people: tables, job details, status, progress.

Pure functions of the API's answers (and a clock), so they are tested without a daemon; the
progress views draw ``boxd enqueue --wait`` as plain lines or, on a terminal, a rich bar.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol, TextIO

#: Seconds between plain progress lines (when something changed; at once when the state does).
PLAIN_INTERVAL = 5.0
FINISHED = ("succeeded", "failed", "cancelled")


# --- rendering (pure) ---------------------------------------------------------------------


def human_size(n: float) -> str:
    """``1536`` → ``1.5 KiB``; bytes stay exact."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def clock(seconds: float | None) -> str:
    """``75`` → ``1:15``; ``3725`` → ``1:02:05``; None → ``-:--``."""
    if seconds is None or seconds < 0:
        return "-:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def duration_text(seconds: float) -> str:
    """``11520`` → ``3h 12m``: the two largest units."""
    s = int(max(0.0, seconds))
    days, hours, minutes, secs = s // 86400, s // 3600 % 24, s // 60 % 60, s % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def local_time(stamp: str | None, tz: tzinfo | None = None) -> str:
    """An RFC 3339 stamp of the API as ``YYYY-MM-DD HH:MM:SS`` in ``tz`` (local time by default)."""
    if not stamp:
        return "-"
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; nothing is cut (a script may parse it)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _kv(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in pairs)


def files_ended(job: Mapping[str, Any]) -> int:
    return int(job.get("files_done", 0)) + int(job.get("files_skipped", 0)) + int(job.get("files_failed", 0))


def state_text(job: Mapping[str, Any]) -> str:
    """``running``, or ``queued (waiting: rate_limited)``."""
    reason = job.get("waiting_reason")
    return f"{job.get('state')} (waiting: {reason})" if reason else str(job.get("state"))


def destination_text(job: Mapping[str, Any]) -> str:
    if job.get("destination") is not None:
        return str(job["destination"])
    return f"folder #{job.get('folder_id')}"


def _files_cell(job: Mapping[str, Any]) -> str:
    failed = int(job.get("files_failed", 0))
    return f"{files_ended(job)}/{job.get('files_total', 0)}" + (f", {failed} failed" if failed else "")


def _bytes_cell(job: Mapping[str, Any]) -> str:
    return f"{human_size(job.get('bytes_done', 0))}/{human_size(job.get('bytes_total', 0))}"


def jobs_text(jobs: Sequence[Mapping[str, Any]], tz: tzinfo | None = None) -> str:
    """The table of ``boxd jobs``."""
    if not jobs:
        return "no jobs"
    headers = ("ID", "STATE", "CREATED", "FILES", "BYTES", "SOURCE", "DESTINATION")
    rows = [
        (
            str(j.get("id")),
            state_text(j),
            local_time(j.get("created_at"), tz),
            _files_cell(j),
            _bytes_cell(j),
            str(j.get("source")),
            destination_text(j),
        )
        for j in jobs
    ]
    return format_table(headers, rows)


def _error_text(error: Any) -> str:
    if not isinstance(error, Mapping):
        return "-"
    return f"{error.get('code')}: {error.get('message')}"


def job_text(job: Mapping[str, Any], tz: tzinfo | None = None) -> str:
    """The summary and file table of ``boxd show``."""
    total = int(job.get("bytes_total", 0))
    pct = f" ({100 * int(job.get('bytes_done', 0)) // total}%)" if total else ""
    dest = destination_text(job)
    pairs = [
        ("job", str(job.get("id"))),
        ("state", state_text(job)),
        ("source", str(job.get("source"))),
        ("destination", dest),
        ("mode", f"{job.get('mode')}, on conflict: {job.get('on_conflict')}, priority {job.get('priority')}"),
        ("key", str(job.get("idempotency_key") or "-")),
        ("created", local_time(job.get("created_at"), tz)),
        ("started", local_time(job.get("started_at"), tz)),
        ("finished", local_time(job.get("finished_at"), tz)),
        ("attempts", str(job.get("attempts"))),
        (
            "files",
            f"{job.get('files_done')} done, {job.get('files_skipped')} skipped, "
            f"{job.get('files_failed')} failed of {job.get('files_total')}",
        ),
        ("bytes", f"{human_size(job.get('bytes_done', 0))} of {human_size(total)}{pct}"),
        ("error", _error_text(job.get("error"))),
    ]
    out = _kv(pairs)
    files = job.get("files")
    if files:
        trash = any(f.get("action", "upload") != "upload" for f in files)
        headers = ("PATH", *(("ACTION",) if trash else ()), "SIZE", "STATE", "BOX ID", "ERROR")
        rows = [
            (
                str(f.get("path")),
                *((str(f.get("action")),) if trash else ()),
                human_size(f.get("size", 0)),
                str(f.get("state")),
                str(f.get("box_file_id") or "-"),
                _error_text(f.get("error")) if f.get("error") else "",
            )
            for f in files
        ]
        out += "\n\n" + format_table(headers, rows)
    return out


def _auth_text(auth: Any) -> str:
    if not isinstance(auth, Mapping):
        return str(auth)
    text = str(auth.get("state", "unknown"))
    extra = [str(auth[k]) for k in ("method", "detail") if auth.get(k)]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _auth_from_flag(ok: Any) -> str:
    """A bare ``auth_ok`` flag of the scheduler as an auth state."""
    return "unknown" if ok is None else "ok" if ok else "needs_reauthorization"


def status_text(status: Mapping[str, Any], socket: Path | str, tz: tzinfo | None = None) -> str:
    """The summary of ``boxd status``."""
    counts = status.get("jobs") or {}
    queue = ", ".join(f"{n} {state}" for state, n in counts.items()) if isinstance(counts, Mapping) else str(counts)
    up = duration_text(float(status.get("uptime_seconds", 0)))
    since = local_time(status.get("started_at"), tz)
    pairs = [
        ("daemon", f"boxd {status.get('version')} on {socket}, up {up} (since {since})"),
        ("auth", _auth_text(status.get("auth", _auth_from_flag(status.get("auth_ok"))))),
        ("queue", queue),
    ]
    if "paused" in status:
        reason = status.get("pause_reason")
        pairs.append(("paused", ("yes" + (f": {reason}" if reason else "")) if status["paused"] else "no"))
    transfers = status.get("transfers")
    lines: list[str] = []
    if isinstance(transfers, list):
        pairs.append(("transfers", f"{len(transfers)} in flight"))
        for t in transfers:
            if isinstance(t, Mapping):
                done = f"{human_size(t.get('bytes_done', 0))}/{human_size(t.get('size', 0))}"
                lines.append(f"  {t.get('job_id')}  {t.get('path')}  {done}")
    elif transfers is not None:
        pairs.append(("transfers", f"{transfers} in flight"))
    known = {"version", "started_at", "uptime_seconds", "jobs", "auth", "auth_ok", "paused", "pause_reason"}
    known.add("transfers")
    for key, value in status.items():
        if key not in known:
            pairs.append((key, value if isinstance(value, str) else json.dumps(value)))
    return "\n".join([_kv(pairs), *lines])


@dataclass(frozen=True)
class Sample:
    at: float
    bytes_done: int
    files_ended: int


class RateMeter:
    """Transfer rate and time left from the job's counters, over a sliding window of samples."""

    def __init__(self, window: float = 15.0) -> None:
        self.window = window
        self._samples: collections.deque[Sample] = collections.deque()
        self._job: Mapping[str, Any] = {}

    def add(self, at: float, job: Mapping[str, Any]) -> None:
        """Record the job as seen at ``at`` (monotonic seconds)."""
        self._job = job
        self._samples.append(Sample(at, int(job.get("bytes_done", 0)), files_ended(job)))
        while len(self._samples) > 2 and self._samples[1].at <= at - self.window:
            self._samples.popleft()

    def _span(self) -> tuple[float, Sample, Sample] | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        elapsed = last.at - first.at
        return (elapsed, first, last) if elapsed > 0 else None

    @property
    def rate(self) -> float:
        """Bytes per second over the window (0 until two samples)."""
        span = self._span()
        return 0.0 if span is None else max(0.0, (span[2].bytes_done - span[1].bytes_done) / span[0])

    @property
    def eta(self) -> float | None:
        """Seconds left: by bytes, or by files when that is further (many small files are held
        back by Box's uploads-per-minute limit, not by bandwidth). None while unknown."""
        job, span = self._job, self._span()
        bytes_left = int(job.get("bytes_total", 0)) - int(job.get("bytes_done", 0))
        files_left = int(job.get("files_total", 0)) - files_ended(job)
        if not job.get("files_total"):
            return None  # not planned yet
        if bytes_left <= 0 and files_left <= 0:
            return 0.0
        if span is None:
            return None
        elapsed, first, last = span
        estimates = []
        if bytes_left > 0:
            if last.bytes_done <= first.bytes_done:
                return None
            estimates.append(bytes_left * elapsed / (last.bytes_done - first.bytes_done))
        if files_left > 0 and last.files_ended > first.files_ended:
            estimates.append(files_left * elapsed / (last.files_ended - first.files_ended))
        return max(estimates) if estimates else None


def progress_line(job: Mapping[str, Any], meter: RateMeter) -> str:
    """One plain progress line of ``enqueue --wait`` when stdout is not a terminal."""
    total = int(job.get("bytes_total", 0))
    pct = f" ({100 * int(job.get('bytes_done', 0)) // total}%)" if total else ""
    return (
        f"{job.get('id')} {state_text(job)}: {files_ended(job)}/{job.get('files_total', 0)} files, "
        f"{_bytes_cell(job)}{pct}, {human_size(meter.rate)}/s, ETA {clock(meter.eta)}"
    )


def final_line(job: Mapping[str, Any], elapsed: float) -> str:
    """How a waited-for job ended."""
    state = job.get("state")
    if state == "succeeded":
        moved = human_size(job.get("bytes_total", 0))
        return (
            f"job {job.get('id')} succeeded: {job.get('files_total')} files ({job.get('files_done')} done, "
            f"{job.get('files_skipped')} skipped), {moved} in {clock(elapsed)}"
        )
    if state == "failed":
        return f"job {job.get('id')} failed: {_error_text(job.get('error'))}"
    return f"job {job.get('id')} {state}"


def enqueued_text(job: Mapping[str, Any], created: bool) -> str:
    if created:
        return f"queued job {job.get('id')}: {job.get('source')} → {destination_text(job)} ({job.get('mode')})"
    return (
        f"job {job.get('id')} already exists for idempotency key {job.get('idempotency_key')!r} "
        f"(state: {state_text(job)})"
    )


# --- progress views -----------------------------------------------------------------------


class ProgressView(Protocol):
    def update(self, job: Mapping[str, Any], meter: RateMeter) -> None: ...
    def note(self, message: str) -> None: ...
    def close(self) -> None: ...


class PlainView:
    """A line when the state changes, else every ``interval`` seconds while progress is made."""

    def __init__(self, out: TextIO, interval: float = PLAIN_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.out, self.interval, self._clock = out, interval, clock
        self._last_at: float | None = None
        self._last_key: tuple[Any, ...] | None = None

    def update(self, job: Mapping[str, Any], meter: RateMeter) -> None:
        now = self._clock()
        state_key = (job.get("state"), job.get("waiting_reason"))
        key = (*state_key, job.get("bytes_done"), files_ended(job), job.get("files_total"))
        changed_state = self._last_key is None or self._last_key[:2] != state_key
        due = self._last_at is None or now - self._last_at >= self.interval
        if changed_state or (due and key != self._last_key):
            print(progress_line(job, meter), file=self.out, flush=True)
            self._last_at, self._last_key = now, key

    def note(self, message: str) -> None:
        print(message, file=self.out, flush=True)

    def close(self) -> None:
        pass


class RichView:
    """A rich progress bar: state, bar, bytes, files, rate, ETA."""

    def __init__(self, job_id: str, console: Any = None) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[files]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
        )
        self._task = self._progress.add_task(job_id, total=None, files="", rate="", eta="-:--")
        self._progress.start()

    def update(self, job: Mapping[str, Any], meter: RateMeter) -> None:
        total = int(job.get("bytes_total", 0))
        self._progress.update(
            self._task,
            description=f"{job.get('id')} {state_text(job)}",
            total=total or None,
            completed=int(job.get("bytes_done", 0)),
            files=f"{files_ended(job)}/{job.get('files_total', 0)} files",
            rate=f"{human_size(meter.rate)}/s",
            eta=clock(meter.eta),
        )

    def note(self, message: str) -> None:
        self._progress.console.print(message)

    def close(self) -> None:
        self._progress.stop()
