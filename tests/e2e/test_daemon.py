"""boxd as its users meet it: a real daemon process, the CLI, the emulator, signals and crashes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.daemonproc import Daemon, running_daemon
from tests.simproc import Sim, running_sim

MIB = 1024 * 1024


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    with running_sim(tmp_path / "sim") as s:
        yield s


def make_repo(root: Path, *, packs: int = 12, big: int = 0) -> dict[str, str]:
    """A small restic-like tree (and optionally one large file); returns rel path → SHA-1."""
    files = {"config": os.urandom(300), "keys/k1": os.urandom(400), "index/i1": os.urandom(2000)}
    for n in range(packs):
        files[f"data/{n:02x}/pack{n}"] = os.urandom(20_000 + n * 1000)
    if big:
        files["archive.tar"] = os.urandom(big)
    sums = {}
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        sums[rel] = hashlib.sha1(content).hexdigest()
    return sums


def remote(sim: Sim, prefix: str) -> dict[str, str]:
    """rel path → SHA-1 of the files the emulator holds under ``prefix/``."""
    return {
        f["path"].removeprefix(prefix + "/"): f["sha1"]
        for f in sim.state()["files"]
        if f["path"].startswith(prefix + "/")
    }


def job_json(daemon: Daemon, *args: str) -> dict[str, Any]:
    proc = daemon.boxd(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def wait_job(daemon: Daemon, job_id: str, done: Any, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = job_json(daemon, "show", job_id)
        if done(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the condition: {job}\n{daemon.log()}"
        time.sleep(0.2)  # polling the API with a deadline


def test_enqueue_wait_uploads_everything_and_a_second_copy_uploads_nothing(tmp_path: Path, sim: Sim) -> None:
    with running_daemon(sim, tmp_path / "d") as daemon:
        repo = daemon.source / "restic"
        sums = make_repo(repo, big=60 * MIB)
        first = daemon.boxd("enqueue", str(repo), "--to", "Backups/host1", "--wait")
        assert first.returncode == 0, first.stdout + first.stderr + daemon.log()
        assert remote(sim, "Backups/host1") == sums
        # Every uploaded file's SHA-1 (as Box confirmed it) is cached by path, size, mtime and
        # inode, so planning the next run of the unchanged tree reads no file content.
        with sqlite3.connect(daemon.state_dir / "queue.db") as db:
            cached = dict(db.execute("SELECT path, sha1 FROM sha1_cache").fetchall())
        assert {p.removeprefix(str(repo.resolve()) + "/"): h for p, h in cached.items()} == sums
        uploads = sim.stats()["requests"].get("POST /api/2.0/files/content", {})
        again = daemon.boxd("enqueue", str(repo), "--to", "Backups/host1", "--wait")
        assert again.returncode == 0, again.stderr
        assert sim.stats()["requests"].get("POST /api/2.0/files/content", {}) == uploads
        jobs = job_json(daemon, "jobs")["jobs"]
        assert jobs[0]["files_skipped"] == len(sums) and jobs[0]["state"] == "succeeded"
        assert daemon.stop() == 0
        assert any("STOPPING=1" in m for m in daemon.messages)


def test_kill_9_during_a_chunked_upload_resumes_without_resending_parts(tmp_path: Path, sim: Sim) -> None:
    sim.set_faults(bandwidth=25 * MIB)  # slow enough to kill mid-session
    with running_daemon(sim, tmp_path / "d", part_concurrency=2) as daemon:
        big = daemon.source / "big.bin"
        big.write_bytes(os.urandom(120 * MIB))
        job = job_json(daemon, "enqueue", str(big), "--to", "Backups")
        deadline = time.monotonic() + 60
        while not any(s["parts_uploaded"] >= 4 for s in sim.state()["sessions"]):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        daemon.kill()
        sim.reset_faults()
        daemon.start()
        done = wait_job(daemon, job["id"], lambda j: j["state"] in ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert remote(sim, "Backups") == {"big.bin": hashlib.sha1(big.read_bytes()).hexdigest()}
        [session] = sim.state()["sessions"]
        puts = sum(sim.stats()["requests"]["PUT /api/2.0/files/upload_sessions/{session_id}"].values())
        assert session["state"] == "committed"
        assert puts <= session["total_parts"] + 2  # at most the parts in flight at the kill went twice


def test_sigterm_drains_and_queued_jobs_survive_a_restart(tmp_path: Path, sim: Sim) -> None:
    sim.set_faults(bandwidth=10 * MIB)
    with running_daemon(sim, tmp_path / "d", transfers=1, shutdown_grace="1s") as daemon:
        (daemon.source / "a").mkdir()
        make_repo(daemon.source / "a", packs=2, big=60 * MIB)
        (daemon.source / "b").mkdir()
        sums_b = make_repo(daemon.source / "b", packs=3)
        first = job_json(daemon, "enqueue", str(daemon.source / "a"), "--to", "A")
        second = job_json(daemon, "enqueue", str(daemon.source / "b"), "--to", "B", "--priority", "-5")
        assert daemon.stop(signal.SIGTERM) == 0
        assert any("STOPPING=1" in m for m in daemon.messages)
        sim.reset_faults()
        daemon.start()
        for job in (first, second):
            done = wait_job(daemon, job["id"], lambda j: j["state"] in ("succeeded", "failed"))
            assert done["state"] == "succeeded", done
        assert remote(sim, "B") == sums_b


def test_a_revoked_token_makes_jobs_wait_until_token_import(tmp_path: Path, sim: Sim) -> None:
    with running_daemon(sim, tmp_path / "d") as daemon:
        sums = make_repo(daemon.source / "r", packs=2)
        sim.admin("POST", "/_sim/revoke")
        job = job_json(daemon, "enqueue", str(daemon.source / "r"), "--to", "R")
        waiting = wait_job(daemon, job["id"], lambda j: j["waiting_reason"] is not None)
        assert waiting["waiting_reason"] == "auth_needs_reauthorization" and waiting["state"] == "queued"
        status, body = daemon.http("/readyz")
        assert status == 503 and json.loads(body)["checks"]["auth"] != "ok"
        assert "boxd_auth_ok 0.0" in daemon.http("/metrics")[1]
        imported = daemon.boxd("token", "import", "-", stdin=json.dumps(sim.new_token()))
        assert imported.returncode == 0, imported.stderr
        done = wait_job(daemon, job["id"], lambda j: j["state"] in ("succeeded", "failed"))
        assert done["state"] == "succeeded", done
        assert remote(sim, "R") == sums
        assert daemon.http("/readyz")[0] == 200
