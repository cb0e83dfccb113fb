"""One accounting object that every Box request and upload reports to.

Upload and client code call these methods; :mod:`boxd.metrics` (the only importer of
prometheus_client) reads :class:`Stats` when Prometheus scrapes. Nothing here does I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the request-duration buckets: from a folder listing to a 64 MiB part.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class Histogram:
    """Cumulative-ready bucket counts of one operation's durations."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))  # last: above every bound
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.counts[index] += 1
        self.total += seconds


@dataclass
class Stats:
    """Counters and gauges of one process; thread-safe, cheap to update."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, status) -> count
    latency: dict[str, Histogram] = field(default_factory=dict)  # op -> request durations
    retries: Counter[str] = field(default_factory=Counter)  # reason -> count
    rate_limited: int = 0
    token_refreshes: Counter[str] = field(default_factory=Counter)  # result -> count
    token_expiry: float | None = None
    auth_ok: bool = True
    parts_in_flight: int = 0
    buffered_bytes: int = 0
    peak_buffered_bytes: int = 0
    uploaded_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    last_network_error: str | None = None  # op of the latest request that got no answer; None after any answer
    jobs_finished: Counter[str] = field(default_factory=Counter)  # outcome -> count
    files_finished: Counter[str] = field(default_factory=Counter)  # outcome -> count

    def request(self, op: str, status: int | str, seconds: float) -> None:
        """A finished request: ``status`` is the HTTP status or ``"error"`` for a network failure."""
        with self._lock:
            self.requests[(op, str(status))] += 1
            self.last_network_error = op if status == "error" else None
            self.latency.setdefault(op, Histogram()).observe(seconds)

    def box_reachable(self) -> str:
        """``ok``, or why Box looks unreachable (for ``/readyz``)."""
        return "ok" if self.last_network_error is None else f"no answer from Box ({self.last_network_error})"

    def retry(self, reason: str) -> None:
        with self._lock:
            self.retries[reason] += 1

    def rate_limit_hit(self) -> None:
        with self._lock:
            self.rate_limited += 1

    def token_refresh(self, result: str, expires_at: float | None = None) -> None:
        """``result`` is ``ok``, ``error`` or ``invalid_grant``."""
        with self._lock:
            self.token_refreshes[result] += 1
            if expires_at is not None:
                self.token_expiry = expires_at

    def set_auth_ok(self, ok: bool) -> None:
        self.auth_ok = ok

    def part_started(self, nbytes: int) -> None:
        with self._lock:
            self.parts_in_flight += 1

    def part_finished(self, nbytes: int, uploaded: bool) -> None:
        with self._lock:
            self.parts_in_flight -= 1
            if uploaded:
                self.uploaded_bytes += nbytes

    def file_uploaded(self, nbytes: int) -> None:
        """A simple (one-request) upload of ``nbytes`` succeeded."""
        with self._lock:
            self.uploaded_bytes += nbytes

    def job_finished(self, outcome: str) -> None:
        """``outcome``: succeeded, failed or cancelled."""
        with self._lock:
            self.jobs_finished[outcome] += 1

    def file_finished(self, outcome: str) -> None:
        """``outcome``: uploaded, skipped, trashed, failed or cancelled."""
        with self._lock:
            self.files_finished[outcome] += 1

    def buffer(self, delta: int) -> None:
        """Part bytes held in memory grew (or shrank, negative) by ``delta``."""
        with self._lock:
            self.buffered_bytes += delta
            self.peak_buffered_bytes = max(self.peak_buffered_bytes, self.buffered_bytes)
