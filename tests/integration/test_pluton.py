"""Pluton's side of boxd: the onBackupComplete hook script and the Node.js example, run for real.

Both run as subprocesses (``sh config/pluton/boxd-hook.sh``, ``node config/pluton/enqueue.js``)
against a real ``boxd serve`` and the Box emulator, as Pluton would run them; the jobs they
create must end with the repository's files on the emulator.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, require
from tests.e2e.daemonproc import Daemon, running_daemon
from tests.simproc import Sim

HOOK = REPO / "config" / "pluton" / "boxd-hook.sh"
NODE_EXAMPLE = REPO / "config" / "pluton" / "enqueue.js"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("boxd", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


def api(daemon: Daemon, method: str, path: str) -> Any:
    conn = _UnixConnection(daemon.socket_path)
    try:
        conn.request(method, path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_job(daemon: Daemon, job_id: str, states: tuple[str, ...], timeout: float = 60.0) -> dict[str, Any]:
    """Poll the control API until the job reaches one of ``states`` (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        job = dict(api(daemon, "GET", f"/v1/jobs/{job_id}?files=false"))
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job stayed {job['state']}: {job}\n{daemon.log()}"
        time.sleep(0.1)


def make_restic_repo(repo: Path, packs: int = 6) -> None:
    """The layout restic writes: config, keys/, index/, snapshots/, data/XX/ packs."""
    files = {"config": 200, "keys/" + "a1" * 32: 450, "index/" + "b2" * 32: 3000, "snapshots/" + "c3" * 32: 300}
    for n in range(packs):
        name = hashlib.sha256(str(n).encode()).hexdigest()
        files[f"data/{name[:2]}/{name}"] = 30_000 + 1000 * n
    for rel, size in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def local_files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def remote_files(sim: Sim, prefix: str) -> dict[str, str]:
    return {
        f["path"].removeprefix(prefix + "/"): f["sha1"]
        for f in sim.state()["files"]
        if f["path"].startswith(prefix + "/")
    }


def run_hook(daemon: Daemon | None, *args: str, shell: str = "sh", **env: str) -> subprocess.CompletedProcess[str]:
    """``sh boxd-hook.sh ARGS`` the way Pluton runs a hook: a fresh shell (``/bin/sh``, or bash
    for a ``.sh`` script in recent Pluton versions), the caller's environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BOXD_")}
    if daemon is not None:
        base["BOXD_SOCKET"] = str(daemon.socket_path)
    return subprocess.run(
        [shell, str(HOOK), *args], capture_output=True, text=True, timeout=60, env={**base, **env}, check=False
    )


def test_hook_is_posix_sh_per_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    require(shellcheck is not None, "shellcheck is not installed (Debian package shellcheck)")
    assert shellcheck is not None
    proc = subprocess.run([shellcheck, "--shell=sh", str(HOOK)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def run_node(daemon: Daemon, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {**os.environ, "BOXD_SOCKET": str(daemon.socket_path)}
    node = shutil.which("node")
    assert node is not None
    return subprocess.run(
        [node, str(NODE_EXAMPLE), *args], capture_output=True, text=True, timeout=60, env={**base, **env}, check=False
    )


@pytest.fixture
def daemon(tmp_path: Path, sim: Sim) -> Iterator[Daemon]:
    with running_daemon(sim, tmp_path / "d", max_attempts=1) as d:
        yield d


@pytest.fixture
def need_curl() -> None:
    require(shutil.which("curl") is not None, "curl is not installed (Debian package curl)")


@pytest.fixture
def need_node() -> None:
    require(shutil.which("node") is not None, "node is not installed (Debian package nodejs)")


@pytest.mark.usefixtures("need_curl")
def test_hook_mirrors_the_repository_once_per_repository_state(daemon: Daemon, sim: Sim) -> None:
    repo = daemon.source / "restic" / "plan1"
    make_restic_repo(repo)

    first = run_hook(daemon, str(repo), "Backups/host1/plan1")
    assert first.returncode == 0, first.stderr + daemon.log()
    job_id = first.stdout.strip()
    assert job_id.startswith("j_"), first.stdout
    assert f"job {job_id} queued: mirror {repo}" in first.stderr
    job = wait_job(daemon, job_id, ("succeeded", "failed"))
    assert job["state"] == "succeeded", job
    assert (job["mode"], job["source"]) == ("mirror", str(repo))
    assert job["idempotency_key"].startswith("pluton-restic-")
    assert remote_files(sim, "Backups/host1/plan1") == local_files(repo)

    # Pluton (or an operator) runs the hook again for the same repository state: same job.
    again = run_hook(daemon, str(repo), "Backups/host1/plan1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == job_id
    assert "already exists (succeeded)" in again.stderr

    # The next backup adds a snapshot, an index and a pack; a prune removed an old pack.
    old_pack = sorted((repo / "data").rglob("*"))[-1]
    old_pack.unlink()
    (repo / "snapshots" / ("d4" * 32)).write_bytes(os.urandom(310))
    (repo / "index" / ("e5" * 32)).write_bytes(os.urandom(2000))
    (repo / "data" / "ff").mkdir(exist_ok=True)
    (repo / "data" / "ff" / ("f6" * 32)).write_bytes(os.urandom(40_000))
    second = run_hook(daemon, str(repo), "Backups/host1/plan1")
    assert second.returncode == 0, second.stderr
    second_id = second.stdout.strip()
    assert second_id != job_id
    assert wait_job(daemon, second_id, ("succeeded", "failed"))["state"] == "succeeded"
    assert remote_files(sim, "Backups/host1/plan1") == local_files(repo)
    assert old_pack.name in {f["name"] for f in sim.state()["trash"]}


@pytest.mark.usefixtures("need_curl")
def test_hook_accepts_a_relative_path_odd_characters_and_an_explicit_key(daemon: Daemon, sim: Sim) -> None:
    name = 'etc "daily" $HOME & more.tar.zst'  # JSON and shell metacharacters in a file name
    archive = daemon.source / "archives" / name
    archive.parent.mkdir(parents=True)
    archive.write_bytes(os.urandom(70_000))
    proc = subprocess.run(
        ["sh", str(HOOK), f"archives/{name}", "/Backups/host1/archives"],
        cwd=daemon.source,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BOXD_SOCKET": str(daemon.socket_path), "BOXD_IDEMPOTENCY_KEY": "etc-2024-06-01"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    job = wait_job(daemon, proc.stdout.strip(), ("succeeded", "failed"))
    assert (job["state"], job["source"], job["idempotency_key"]) == ("succeeded", str(archive), "etc-2024-06-01")
    expected = {name: hashlib.sha1(archive.read_bytes()).hexdigest()}
    assert remote_files(sim, "Backups/host1/archives") == expected

    odd = daemon.source / "back\\slash"  # a JSON escape in the request body
    odd.mkdir()
    again = run_hook(daemon, str(odd), "Backups/odd")
    assert again.returncode == 0, again.stderr
    assert api(daemon, "GET", f"/v1/jobs/{again.stdout.strip()}?files=false")["source"] == str(odd)


@pytest.mark.usefixtures("need_curl")
def test_hook_retries_the_failed_job_of_the_same_repository_state(daemon: Daemon, sim: Sim) -> None:
    repo = daemon.source / "restic" / "plan2"
    make_restic_repo(repo, packs=2)
    sim.set_faults(rate_5xx=1.0)  # every Box call fails; the daemon gives up after max_attempts=1
    first = run_hook(daemon, str(repo), "Backups/plan2")
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    assert wait_job(daemon, job_id, ("succeeded", "failed"), timeout=90)["state"] == "failed"

    sim.reset_faults()
    again = run_hook(daemon, str(repo), "Backups/plan2")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == job_id
    assert "had failed; its failed files are queued again" in again.stderr
    assert wait_job(daemon, job_id, ("succeeded", "failed"))["state"] == "succeeded"
    assert remote_files(sim, "Backups/plan2") == local_files(repo)


@pytest.mark.usefixtures("need_curl")
@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_hook_explains_every_failure_with_its_own_exit_status(daemon: Daemon, tmp_path: Path, shell: str) -> None:
    hook = functools.partial(run_hook, shell=shell)
    usage = hook(daemon)
    assert usage.returncode == 64
    assert "usage:" in usage.stderr and "expected 2 arguments" in usage.stderr

    empty = hook(daemon, "", "Backups")
    assert (empty.returncode, "REPO_PATH is empty" in empty.stderr) == (64, True)

    missing = hook(daemon, str(daemon.source / "nope"), "Backups")
    assert missing.returncode == 66
    assert "does not exist" in missing.stderr

    outside = tmp_path / "elsewhere"
    make_restic_repo(outside, packs=1)
    refused = hook(daemon, str(outside), "Backups")
    assert refused.returncode == 65, refused.stderr
    assert "boxd refused the job (HTTP 400 invalid_source)" in refused.stderr
    assert refused.stdout == ""

    repo = daemon.source / "r"
    make_restic_repo(repo, packs=1)
    no_socket = hook(None, str(repo), "Backups", BOXD_SOCKET=str(tmp_path / "missing.sock"))
    assert no_socket.returncode == 69
    assert "no boxd control socket" in no_socket.stderr

    # A socket file nobody listens on: what a crashed daemon leaves behind.
    stale = Path(str(daemon.socket_path) + ".stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(stale))
    try:
        dead = hook(None, str(repo), "Backups", BOXD_SOCKET=str(stale))
    finally:
        stale.unlink()
    assert dead.returncode == 69, dead.stderr
    assert "cannot connect to boxd" in dead.stderr

    assert api(daemon, "GET", "/v1/jobs")["jobs"] == []  # nothing was enqueued by any of these


@pytest.mark.usefixtures("need_node")
def test_node_example_enqueues_over_the_socket(daemon: Daemon, sim: Sim, tmp_path: Path) -> None:
    repo = daemon.source / "restic" / "plan3"
    make_restic_repo(repo, packs=3)
    proc = run_node(daemon, str(repo), "Backups/node", BOXD_IDEMPOTENCY_KEY="node-test-1")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    job = json.loads(proc.stdout)
    assert (job["state"], job["mode"], job["source"]) == ("queued", "mirror", str(repo))
    assert f"job {job['id']} is queued (HTTP 202)" in proc.stderr
    assert wait_job(daemon, job["id"], ("succeeded", "failed"))["state"] == "succeeded"
    assert remote_files(sim, "Backups/node") == local_files(repo)

    repeated = run_node(daemon, str(repo), "Backups/node", BOXD_IDEMPOTENCY_KEY="node-test-1")
    assert repeated.returncode == 0, repeated.stderr
    assert json.loads(repeated.stdout)["id"] == job["id"]
    assert "(HTTP 200)" in repeated.stderr

    refused = run_node(daemon, str(tmp_path), "Backups/node")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["code"] == "invalid_source"

    unreachable = run_node(daemon, str(repo), "Backups/node", BOXD_SOCKET=str(tmp_path / "missing.sock"))
    assert unreachable.returncode == 2
    assert "cannot reach boxd" in unreachable.stderr

    usage = run_node(daemon)
    assert usage.returncode == 64
