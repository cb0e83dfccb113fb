"""Metrics rendering, log redaction and the daemon's side of systemd's protocols."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import structlog

from boxd import logs, systemd
from boxd.accounting import Stats
from boxd.metrics import Metrics


def test_metrics_render_every_design_name_from_stats() -> None:
    stats = Stats()
    stats.request("upload_part", 200, 0.3)
    stats.request("upload_part", 429, 0.01)
    stats.retry("network")
    stats.rate_limit_hit()
    stats.token_refresh("ok", 1_900_000_000.0)
    stats.job_finished("succeeded")
    stats.file_finished("uploaded")
    stats.file_uploaded(1234)
    text = Metrics(stats).render({"queued": 2, "running": 1}).decode()
    for line in [
        'boxd_jobs_total{outcome="succeeded"} 1.0',
        'boxd_jobs{state="queued"} 2.0',
        'boxd_files_total{outcome="uploaded"} 1.0',
        "boxd_uploaded_bytes_total 1234.0",
        'boxd_box_requests_total{op="upload_part",status="429"} 1.0',
        'boxd_box_request_seconds_bucket{le="0.5",op="upload_part"} 2.0',
        'boxd_box_request_seconds_count{op="upload_part"} 2.0',
        "boxd_rate_limited_total 1.0",
        'boxd_retries_total{reason="network"} 1.0',
        'boxd_token_refreshes_total{result="ok"} 1.0',
        "boxd_token_expiry_timestamp_seconds 1.9e+09",
        "boxd_auth_ok 1.0",
        "boxd_parts_in_flight 0.0",
        "boxd_buffered_bytes 0.0",
    ]:
        assert line in text, line
    assert 'boxd_build_info{version="' in text


def test_secret_fields_and_bearer_tokens_never_reach_the_log(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure(json=True)
    try:
        logs.get("test").info(
            "token_refreshed",
            refresh_token="r-123",
            client_secret="s-456",
            detail="sent Authorization: Bearer abc.def-ghi",
            job_id="j1",
        )
    finally:
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["event"] == "token_refreshed" and line["job_id"] == "j1"
    assert line["refresh_token"] == line["client_secret"] == logs.REDACTED
    assert "abc.def-ghi" not in line["detail"]


def test_notify_sends_states_to_the_notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1", "STATUS=recovered 0 jobs")
        assert server.recv(4096) == b"READY=1\nSTATUS=recovered 0 jobs"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not systemd.notify("READY=1")


def test_the_watchdog_interval_is_half_of_watchdog_usec_for_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 10.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert systemd.watchdog_interval() is None


def test_listen_fds_only_for_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listen_fds() == []
