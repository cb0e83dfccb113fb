"""What the client commands print: tables, summaries, progress lines, rate and ETA; and how
they find the socket. Pure functions of the API's JSON, no daemon."""

from __future__ import annotations

import io
import re
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from boxd import client
from boxd.cli import build_parser
from boxd.client import request_body, socket_path
from boxd.errors import ConfigError
from boxd.render import (
    PlainView,
    RateMeter,
    RichView,
    clock,
    duration_text,
    enqueued_text,
    final_line,
    format_table,
    human_size,
    job_text,
    jobs_text,
    progress_line,
    status_text,
)

MIB = 1024 * 1024


def job(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "j_018f2a3b4c5d1a2b3c4d",
        "state": "running",
        "waiting_reason": None,
        "source": "/srv/backup/restic",
        "destination": "/Backups/host1",
        "folder_id": None,
        "mode": "copy",
        "on_conflict": "version",
        "idempotency_key": None,
        "priority": 0,
        "created_at": "2024-06-01T12:00:03.250Z",
        "started_at": "2024-06-01T12:00:04.000Z",
        "finished_at": None,
        "attempts": 1,
        "files_total": 40,
        "files_done": 10,
        "files_skipped": 2,
        "files_failed": 0,
        "bytes_total": 64 * MIB,
        "bytes_done": 48 * MIB,
        "error": None,
    }
    return base | changes


def test_small_formatters() -> None:
    assert [human_size(n) for n in (0, 1023, 1536, 48 * MIB, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "48.0 MiB",
        "5.0 GiB",
    ]
    assert [clock(s) for s in (None, -1, 0, 75, 3725)] == ["-:--", "-:--", "0:00", "1:15", "1:02:05"]
    assert [duration_text(s) for s in (5, 65, 11520, 3 * 86400 + 7200)] == ["5s", "1m 5s", "3h 12m", "3d 2h"]


def test_format_table_aligns_and_never_cuts() -> None:
    long = "/srv/" + "x" * 150
    text = format_table(("A", "LONGER"), [("1", long), ("22", "b")])
    assert text.splitlines() == ["A   LONGER", f"1   {long}", "22  b"]


def test_jobs_table() -> None:
    jobs = [
        job(),
        job(
            id="j_018f2a000000aaaaaaaa",
            state="queued",
            waiting_reason="auth_needs_reauthorization",
            destination=None,
            folder_id="12345",
            files_total=0,
            files_done=0,
            files_skipped=0,
            bytes_total=0,
            bytes_done=0,
        ),
        job(id="j_018f29ffffffbbbbbbbb", state="failed", files_failed=3),
    ]
    lines = jobs_text(jobs, tz=UTC).splitlines()
    assert lines[0].split() == ["ID", "STATE", "CREATED", "FILES", "BYTES", "SOURCE", "DESTINATION"]
    assert re.split(r"\s{2,}", lines[1]) == [
        "j_018f2a3b4c5d1a2b3c4d",
        "running",
        "2024-06-01 12:00:03",
        "12/40",
        "48.0 MiB/64.0 MiB",
        "/srv/backup/restic",
        "/Backups/host1",
    ]
    assert len({line.index("2024-06-01") for line in lines[1:]}) == 1  # columns line up
    assert "queued (waiting: auth_needs_reauthorization)" in lines[2] and lines[2].endswith("folder #12345")
    assert "15/40, 3 failed" in lines[3]
    assert jobs_text([]) == "no jobs"


def test_job_detail_with_files() -> None:
    detail = job(
        state="failed",
        finished_at="2024-06-01T12:10:00Z",
        idempotency_key="nightly",
        files_failed=1,
        error={"code": "files_failed", "message": "1 file failed: data/00/ab: Box said no"},
        files=[
            {"path": "config", "action": "upload", "size": 155, "sha1": "a" * 40, "state": "done",
             "box_file_id": "901", "error": None},
            {"path": "data/00/ab", "action": "upload", "size": 16 * MIB, "sha1": None, "state": "failed",
             "box_file_id": None, "error": {"code": "box_refused", "message": "Box said no"}},
        ],
    )  # fmt: skip
    text = job_text(detail, tz=UTC)
    head, table = text.split("\n\n")
    assert head.splitlines() == [
        "job:         j_018f2a3b4c5d1a2b3c4d",
        "state:       failed",
        "source:      /srv/backup/restic",
        "destination: /Backups/host1",
        "mode:        copy, on conflict: version, priority 0",
        "key:         nightly",
        "created:     2024-06-01 12:00:03",
        "started:     2024-06-01 12:00:04",
        "finished:    2024-06-01 12:10:00",
        "attempts:    1",
        "files:       10 done, 2 skipped, 1 failed of 40",
        "bytes:       48.0 MiB of 64.0 MiB (75%)",
        "error:       files_failed: 1 file failed: data/00/ab: Box said no",
    ]
    assert table.splitlines() == [
        "PATH        SIZE      STATE   BOX ID  ERROR",
        "config      155 B     done    901",
        "data/00/ab  16.0 MiB  failed  -       box_refused: Box said no",
    ]
    trash = job(files=[{"path": "old", "action": "trash", "size": 1, "state": "pending"}])
    assert "PATH  ACTION  SIZE" in job_text(trash)


def test_status_summary() -> None:
    status = {
        "version": "0.1.0",
        "started_at": "2024-06-01T09:00:00Z",
        "uptime_seconds": 11520.4,
        "jobs": {"queued": 2, "running": 1, "succeeded": 10, "failed": 1, "cancelled": 0},
        "auth": {"state": "needs_reauthorization", "method": "oauth", "detail": "run boxd token import"},
        "paused": True,
        "pause_reason": "rate_limited",
        "transfers": [{"job_id": "j_1", "path": "data/00/ab", "size": 16 * MIB, "bytes_done": 8 * MIB}],
        "rate_limited_until": None,
    }
    assert status_text(status, "/run/boxd/boxd.sock", tz=UTC).splitlines() == [
        "daemon:             boxd 0.1.0 on /run/boxd/boxd.sock, up 3h 12m (since 2024-06-01 09:00:00)",
        "auth:               needs_reauthorization (oauth, run boxd token import)",
        "queue:              2 queued, 1 running, 10 succeeded, 1 failed, 0 cancelled",
        "paused:             yes: rate_limited",
        "transfers:          1 in flight",
        "rate_limited_until: null",
        "  j_1  data/00/ab  8.0 MiB/16.0 MiB",
    ]
    minimal = status_text({"version": "1", "uptime_seconds": 3, "jobs": {}}, "s")
    assert minimal.splitlines()[1:] == ["auth:   unknown", "queue:"]
    flag = status_text({"version": "1", "jobs": {}, "auth_ok": False, "running_jobs": ["j_1"]}, "s")
    assert flag.splitlines()[1:] == ["auth:         needs_reauthorization", "queue:", 'running_jobs: ["j_1"]']


def test_rate_meter_rate_and_eta() -> None:
    meter = RateMeter(window=10)
    assert meter.rate == 0 and meter.eta is None
    meter.add(0.0, job(bytes_done=0, files_done=0, files_skipped=0))
    assert meter.eta is None  # one sample
    meter.add(2.0, job(bytes_done=8 * MIB, files_done=4, files_skipped=0))
    assert meter.rate == 4 * MIB
    # 56 MiB left at 4 MiB/s = 14 s; 36 files left at 2 files/s = 18 s: the further one counts
    assert meter.eta == pytest.approx(18.0)
    # samples older than the window are dropped, but for the one just at its start: rate over 10..20 s
    meter.add(10.0, job(bytes_done=46 * MIB, files_done=30, files_skipped=0))
    meter.add(20.0, job(bytes_done=56 * MIB, files_done=38, files_skipped=0))
    assert meter.rate == pytest.approx(1 * MIB)
    # one large file in flight: no file finished in the window, the bytes decide
    still = RateMeter()
    still.add(0.0, job(bytes_done=0, files_done=39, files_skipped=0))
    still.add(1.0, job(bytes_done=32 * MIB, files_done=39, files_skipped=0))
    assert still.eta == pytest.approx(1.0)
    # not planned yet, then finished
    fresh = RateMeter()
    fresh.add(0.0, job(files_total=0, bytes_total=0, bytes_done=0, files_done=0, files_skipped=0))
    assert fresh.eta is None
    fresh.add(1.0, job(files_total=2, files_done=2, files_skipped=0, bytes_total=10, bytes_done=10))
    assert fresh.eta == 0.0


def test_progress_and_final_lines() -> None:
    meter = RateMeter()
    meter.add(0.0, job(bytes_done=40 * MIB, files_done=8))
    meter.add(2.0, job())
    # 16 MiB left at 4 MiB/s is 4 s, but 28 files left at 1 file/s is 28 s
    assert progress_line(job(), meter) == (
        "j_018f2a3b4c5d1a2b3c4d running: 12/40 files, 48.0 MiB/64.0 MiB (75%), 4.0 MiB/s, ETA 0:28"
    )
    waiting = job(state="queued", waiting_reason="rate_limited", files_total=0, bytes_total=0, bytes_done=0)
    assert progress_line(waiting, RateMeter()) == (
        "j_018f2a3b4c5d1a2b3c4d queued (waiting: rate_limited): 12/0 files, 0 B/0 B, 0 B/s, ETA -:--"
    )
    done = job(state="succeeded", files_done=38, bytes_done=64 * MIB)
    assert final_line(done, 21.4) == (
        "job j_018f2a3b4c5d1a2b3c4d succeeded: 40 files (38 done, 2 skipped), 64.0 MiB in 0:21"
    )
    failed = job(state="failed", error={"code": "mirror_refused", "message": "would delete 80% of the remote files"})
    assert final_line(failed, 1) == (
        "job j_018f2a3b4c5d1a2b3c4d failed: mirror_refused: would delete 80% of the remote files"
    )
    assert final_line(job(state="cancelled"), 1) == "job j_018f2a3b4c5d1a2b3c4d cancelled"
    assert enqueued_text(job(state="queued"), True) == (
        "queued job j_018f2a3b4c5d1a2b3c4d: /srv/backup/restic → /Backups/host1 (copy)"
    )
    assert enqueued_text(job(idempotency_key="k"), False) == (
        "job j_018f2a3b4c5d1a2b3c4d already exists for idempotency key 'k' (state: running)"
    )


def test_plain_view_prints_on_state_change_and_then_at_intervals() -> None:
    now = [0.0]
    out = io.StringIO()
    view = PlainView(out, interval=5.0, clock=lambda: now[0])
    meter = RateMeter()
    steps = [
        (0.0, job(state="queued", bytes_done=0)),  # first: printed
        (0.5, job(state="running", bytes_done=0)),  # state changed: printed
        (1.0, job(bytes_done=MIB)),  # progress, but too soon
        (5.5, job(bytes_done=2 * MIB)),  # interval passed and progress made: printed
        (11.0, job(bytes_done=2 * MIB)),  # interval passed, nothing changed: quiet
        (11.5, job(state="running", waiting_reason="rate_limited", bytes_done=2 * MIB)),  # printed
    ]
    for at, j in steps:
        now[0] = at
        meter.add(at, j)
        view.update(j, meter)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "j_018f2a3b4c5d1a2b3c4d queued",
        "j_018f2a3b4c5d1a2b3c4d running",
        "j_018f2a3b4c5d1a2b3c4d running",
        "j_018f2a3b4c5d1a2b3c4d running (waiting",
    ]
    assert "2.0 MiB/64.0 MiB" in lines[2]


def test_rich_view_renders_bytes_files_rate_and_eta() -> None:
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160, color_system=None)
    view = RichView("j_1", console=console)
    meter = RateMeter()
    meter.add(0.0, job(bytes_done=40 * MIB, files_done=8))
    meter.add(2.0, job())
    view.update(job(), meter)
    view.close()
    text = buf.getvalue()
    for part in ("running", "48.0/64.0 MiB", "12/40 files", "4.0 MiB/s", "ETA 0:28"):
        assert part in text


def test_request_body_makes_source_absolute_and_leaves_out_unset_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert request_body("repo", destination="/B") == {"source": str(tmp_path / "repo"), "destination": "/B"}
    body = request_body("/srv/x", folder_id="7", mode="mirror", on_conflict="skip", idempotency_key="k", priority=0)
    assert body == {
        "source": "/srv/x",
        "folder_id": "7",
        "mode": "mirror",
        "on_conflict": "skip",
        "idempotency_key": "k",
        "priority": 0,
    }


def test_socket_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "boxd.toml"
    config.write_text('[daemon]\nsocket = "/from/config.sock"\n')
    monkeypatch.delenv("BOXD_SOCKET", raising=False)
    monkeypatch.setenv("BOXD_CONFIG", str(config))
    assert socket_path() == Path("/from/config.sock")
    monkeypatch.setenv("BOXD_SOCKET", "/from/env.sock")
    assert socket_path(None, config) == Path("/from/env.sock")
    assert socket_path(Path("/from/flag.sock"), config) == Path("/from/flag.sock")
    monkeypatch.delenv("BOXD_SOCKET")
    with pytest.raises(ConfigError, match="does not exist"):
        socket_path(None, tmp_path / "missing.toml")


def test_cli_parses_client_commands_with_socket_and_config_after_the_name() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["enqueue", "/srv/b", "--to", "/B", "--mode", "mirror", "--priority", "-5", "--wait", "--socket", "/s",
         "--config", "/c.toml", "--key", "k"]
    )  # fmt: skip
    assert (args.source, args.destination, args.folder_id, args.mode, args.priority) == (
        "/srv/b",
        "/B",
        None,
        "mirror",
        -5,
    )
    assert (args.wait, args.socket, args.config, args.key, args.as_json) == (
        True,
        Path("/s"),
        Path("/c.toml"),
        "k",
        False,
    )
    for argv in (
        ["jobs", "--state", "failed", "--limit", "5", "--json", "--socket", "/s"],
        ["show", "j_1", "--socket", "/s"],
        ["cancel", "j_1", "--config", "/c"],
        ["retry", "j_1", "--json"],
        ["status", "--socket", "/s", "--json"],
    ):
        assert callable(parser.parse_args(argv).func)
    for bad in (
        ["enqueue", "/srv/b"],  # --to or --folder-id
        ["enqueue", "/srv/b", "--to", "/B", "--folder-id", "1"],
        ["enqueue", "/srv/b", "--to", "/B", "--mode", "sync"],
        ["enqueue", "/srv/b", "--to", "/B", "--priority", "101"],
        ["jobs", "--limit", "0"],
        ["jobs", "--state", "done"],
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_unreachable_messages() -> None:
    import errno

    sock = Path("/run/boxd/boxd.sock")
    assert "no daemon socket at /run/boxd/boxd.sock" in str(
        client._unreachable(sock, FileNotFoundError(errno.ENOENT, "x"))
    )
    assert "permission denied" in str(client._unreachable(sock, PermissionError(errno.EACCES, "x")))
    assert "nothing listens" in str(client._unreachable(sock, ConnectionRefusedError(errno.ECONNREFUSED, "x")))
