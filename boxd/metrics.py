"""Prometheus metrics: the only module that imports prometheus_client.

A scrape-time collector reads :class:`~boxd.accounting.Stats` and the job counts, so upload
code never touches Prometheus (rclone's ``fs/accounting/prometheus.go`` does the same).
Names follow DESIGN §3.4 and pass ``promtool check metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from boxd import __version__
from boxd.accounting import BUCKETS, Stats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class BoxdCollector(Collector):
    """Turns one Stats object and the latest job counts into metric families at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.job_counts: Mapping[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        with s._lock:  # one consistent snapshot per scrape
            yield from self._jobs(s)
            yield from self._box(s)
            yield from self._uploads(s)
        info = GaugeMetricFamily("boxd_build_info", "boxd's version; always 1.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

    def _jobs(self, s: Stats) -> Iterator[Metric]:
        finished = CounterMetricFamily("boxd_jobs", "Jobs that ended, by outcome.", labels=["outcome"])
        for outcome in ("succeeded", "failed", "cancelled"):
            finished.add_metric([outcome], s.jobs_finished.get(outcome, 0))
        yield finished
        gauge = GaugeMetricFamily("boxd_jobs", "Jobs in the queue database, by state.", labels=["state"])
        for state in JOB_STATES:
            gauge.add_metric([state], self.job_counts.get(state, 0))
        yield gauge
        files = CounterMetricFamily("boxd_files", "Files that ended, by outcome.", labels=["outcome"])
        for outcome in ("uploaded", "skipped", "trashed", "failed", "cancelled"):
            files.add_metric([outcome], s.files_finished.get(outcome, 0))
        yield files

    def _box(self, s: Stats) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "boxd_box_requests", "Requests to Box, by operation and HTTP status.", labels=["op", "status"]
        )
        for (op, status), n in sorted(s.requests.items()):
            requests.add_metric([op, status], n)
        yield requests
        seconds = HistogramMetricFamily("boxd_box_request_seconds", "Duration of requests to Box.", labels=["op"])
        for op, hist in sorted(s.latency.items()):
            running, buckets = 0, []
            for bound, count in zip([*(str(b) for b in BUCKETS), "+Inf"], hist.counts, strict=True):
                running += count
                buckets.append((bound, running))
            seconds.add_metric([op], buckets, hist.total)
        yield seconds
        yield CounterMetricFamily(
            "boxd_rate_limited", "429 answers from Box (each pauses every request).", value=s.rate_limited
        )
        retries = CounterMetricFamily("boxd_retries", "Requests tried again, by reason.", labels=["reason"])
        for reason, n in sorted(s.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        refreshes = CounterMetricFamily("boxd_token_refreshes", "Token grants, by result.", labels=["result"])
        for result in ("ok", "error", "invalid_grant"):
            refreshes.add_metric([result], s.token_refreshes.get(result, 0))
        yield refreshes
        expiry = GaugeMetricFamily(
            "boxd_token_expiry_timestamp_seconds", "When the current access token expires (Unix time; 0 if unknown)."
        )
        expiry.add_metric([], s.token_expiry or 0)
        yield expiry
        yield GaugeMetricFamily("boxd_auth_ok", "1 while Box accepts boxd's credentials.", value=int(s.auth_ok))

    def _uploads(self, s: Stats) -> Iterator[Metric]:
        yield CounterMetricFamily("boxd_uploaded_bytes", "Bytes Box confirmed receiving.", value=s.uploaded_bytes)
        yield GaugeMetricFamily("boxd_parts_in_flight", "Upload parts being sent now.", value=s.parts_in_flight)
        yield GaugeMetricFamily("boxd_buffered_bytes", "Part bytes held in memory now.", value=s.buffered_bytes)


class Metrics:
    """The registry boxd serves at ``/metrics``."""

    def __init__(self, stats: Stats) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = BoxdCollector(stats)
        self.registry.register(self.collector)

    def render(self, job_counts: Mapping[str, int]) -> bytes:
        """The exposition text, with ``job_counts`` (by state) as of the caller's last look."""
        self.collector.job_counts = dict(job_counts)
        return generate_latest(self.registry)
