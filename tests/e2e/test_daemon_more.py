"""More of boxd as its users meet it: mirror, crashes in a commit, cancel, the raw socket API,
bad input, metrics, the systemd watchdog and the logs. Real processes, sockets and signals.

Waiting is always polling a real condition with a deadline, never a bare sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.e2e.daemonproc import Daemon, running_daemon, write_daemon_config
from tests.e2e.test_daemon import MIB, job_json, make_repo, remote
from tests.simproc import Sim, running_sim

COMMIT = "POST /api/2.0/files/upload_sessions/{session_id}/commit"
PUT_PART = "PUT /api/2.0/files/upload_sessions/{session_id}"
FINISHED = ("succeeded", "failed", "cancelled")


def poll(what: str, condition: Callable[[], Any], *, timeout: float = 60.0, daemon: Daemon | None = None) -> Any:
    """Ask ``condition`` every 0.1 s until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{daemon.log() if daemon else ''}")
        time.sleep(0.1)  # the poll interval, not a synchronisation
    return result


def api(daemon: Daemon, path: str) -> Any:
    """GET on the control socket (cheaper to poll than starting a ``boxd`` client each time)."""
    status, _, answer = raw(daemon, "GET", path)
    assert status == 200, answer
    return answer


def finished(daemon: Daemon, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
    """The job once it has ended."""
    return dict(
        poll(
            f"job {job_id} to end",
            lambda: (job := api(daemon, f"/v1/jobs/{job_id}"))["state"] in FINISHED and job,
            timeout=timeout,
            daemon=daemon,
        )
    )


def requests_to(sim: Sim, route: str) -> dict[str, int]:
    """Status → count of the emulator's answers on ``route`` ("METHOD /template")."""
    return dict(sim.stats()["requests"].get(route, {}))


def download_sha1(sim: Sim, file_id: str) -> str:
    """SHA-1 of the bytes the emulator serves for ``file_id`` (a real download, not its bookkeeping)."""
    token = sim.new_token()["access_token"]
    req = urllib.request.Request(f"{sim.base}/2.0/files/{file_id}/content")
    req.add_header("Authorization", f"Bearer {token}")
    digest = hashlib.sha1()
    with urllib.request.urlopen(req, timeout=60) as resp:
        while chunk := resp.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


# --- raw HTTP over the control socket -----------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over an AF_UNIX stream socket: what a hook script in any language can do."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__("boxd", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.socket_path))
        self.sock = sock


def raw(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, dict[str, str], Any]:
    """One request on a fresh connection: status, headers and the decoded JSON answer."""
    conn = UnixHTTPConnection(daemon.socket_path)
    try:
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if chunked:
            conn.request(method, path, body=iter([body or b""]), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


def post_job(daemon: Daemon, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, answer = raw(daemon, "POST", "/v1/jobs", json.dumps(body).encode())
    return status, answer


# --- 1. mirror ------------------------------------------------------------------------------------


def test_mirror_trashes_what_was_deleted_locally_and_refuses_a_mass_delete(tmp_path: Path, sim: Sim) -> None:
    with running_daemon(sim, tmp_path / "d", mirror_max_delete_percent=50) as daemon:
        repo = daemon.source / "restic"
        sums = make_repo(repo, packs=5)

        def mirror() -> dict[str, Any]:
            job = job_json(daemon, "enqueue", str(repo), "--to", "M", "--mode", "mirror")
            return finished(daemon, job["id"])

        first = mirror()
        assert first["state"] == "succeeded", first
        assert remote(sim, "M") == sums and sim.state()["trash"] == []

        (repo / "keys/k1").unlink()
        del sums["keys/k1"]
        second = mirror()
        assert second["state"] == "succeeded", second
        assert remote(sim, "M") == sums
        assert [f["path"] for f in sim.state()["trash"]] == ["M/keys/k1"]

        # The backup disk "is not mounted": everything is gone locally. Nothing may be deleted.
        for child in repo.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        deletes_before = requests_to(sim, "DELETE /2.0/files/{file_id}")
        refused = mirror()
        assert refused["state"] == "failed", refused
        assert refused["error"]["code"] == "mass_delete_refused", refused["error"]
        message = refused["error"]["message"]
        assert "daemon.mirror_max_delete_percent" in message and "Nothing was deleted" in message, message
        assert remote(sim, "M") == sums
        assert [f["path"] for f in sim.state()["trash"]] == ["M/keys/k1"]
        assert requests_to(sim, "DELETE /2.0/files/{file_id}") == deletes_before
        shown = daemon.boxd("show", refused["id"])
        assert shown.returncode == 0 and "mirror_max_delete_percent" in shown.stdout, shown.stdout + shown.stderr


# --- 2. kill -9 inside the commit loop ------------------------------------------------------------


def test_kill_9_while_box_answers_202_to_the_commit_resumes_and_commits_without_resending_parts(
    tmp_path: Path, sim: Sim
) -> None:
    sim.set_faults(commit_202=4)  # each 202 says Retry-After: 1, so the daemon sits in the commit loop
    with running_daemon(sim, tmp_path / "d", part_concurrency=4) as daemon:
        big = daemon.source / "big.bin"
        big.write_bytes(os.urandom(60 * MIB))
        want = hashlib.sha1(big.read_bytes()).hexdigest()
        job = job_json(daemon, "enqueue", str(big), "--to", "Commit")

        def in_commit_loop() -> bool:
            sessions = sim.state()["sessions"]
            all_parts = bool(sessions) and sessions[0]["parts_uploaded"] == sessions[0]["total_parts"]
            return all_parts and requests_to(sim, COMMIT).get("202", 0) >= 1

        poll("all parts uploaded and a 202 answered to the commit", in_commit_loop, daemon=daemon)
        daemon.kill()
        [session] = sim.state()["sessions"]
        assert session["state"] == "open" and remote(sim, "Commit") == {}
        puts_before = sum(requests_to(sim, PUT_PART).values())

        daemon.start()
        done = finished(daemon, job["id"])
        assert done["state"] == "succeeded", done
        [session] = sim.state()["sessions"]  # the same session was resumed, no new one was created
        assert session["state"] == "committed"
        puts = requests_to(sim, PUT_PART)
        assert sum(puts.values()) == puts_before == session["total_parts"] == 8, puts  # no part went twice
        assert sum(requests_to(sim, "GET /api/2.0/files/upload_sessions/{session_id}/parts").values()) >= 1
        assert requests_to(sim, COMMIT) == {"202": 4, "201": 1}
        assert remote(sim, "Commit") == {"big.bin": want}
        [file] = [f for f in sim.state()["files"] if f["path"] == "Commit/big.bin"]
        assert file["versions"] == 1 and download_sha1(sim, file["id"]) == want
        assert done["files"][0]["box_file_id"] == file["id"]


# --- 3. cancel ------------------------------------------------------------------------------------


def test_cancel_mid_transfer_stops_the_uploads_and_aborts_every_box_session(tmp_path: Path, sim: Sim) -> None:
    sim.set_faults(bandwidth=4 * MIB)  # per connection: an 8 MiB part takes about 2 s
    with running_daemon(sim, tmp_path / "d", transfers=2, part_concurrency=2) as daemon:
        backup = daemon.source / "archives"
        backup.mkdir()
        for name in ("a.tar", "b.tar"):
            (backup / name).write_bytes(os.urandom(56 * MIB))
        job = job_json(daemon, "enqueue", str(backup), "--to", "Cancelled")

        def both_under_way() -> bool:
            sessions = sim.state()["sessions"]
            return len(sessions) == 2 and all(s["parts_uploaded"] >= 1 for s in sessions)

        poll("both files to have a part on Box", both_under_way, daemon=daemon)
        cancel = daemon.boxd("cancel", job["id"], "--json")
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert json.loads(cancel.stdout)["state"] == "cancelled"

        poll(
            "both sessions to be aborted",
            lambda: [s["state"] for s in sim.state()["sessions"]] == ["aborted", "aborted"],
            timeout=30,
            daemon=daemon,
        )
        poll("the job to stop running", lambda: not api(daemon, "/v1/status")["running_jobs"], daemon=daemon)
        done = api(daemon, f"/v1/jobs/{job['id']}")
        assert done["state"] == "cancelled" and done["finished_at"] is not None, done
        assert {f["state"] for f in done["files"]} == {"cancelled"}, done["files"]
        state = sim.state()
        assert state["files"] == [] and all(s["parts_uploaded"] < s["total_parts"] for s in state["sessions"])
        assert COMMIT not in sim.stats()["requests"]
        assert job_json(daemon, "status")["transfers"] == []
        log = daemon.log()
        assert "job_crashed" not in log and "file_failed" not in log, log
        sim.reset_faults()
        # Cancelling again is a conflict, not a crash; the daemon goes on serving.
        again = daemon.boxd("cancel", job["id"])
        assert again.returncode != 0 and "cancelled" in again.stderr, again.stderr
        small = daemon.source / "small.bin"
        small.write_bytes(b"after the cancel")
        after = finished(daemon, job_json(daemon, "enqueue", str(small), "--to", "Cancelled")["id"])
        assert after["state"] == "succeeded", after
        assert remote(sim, "Cancelled") == {"small.bin": hashlib.sha1(b"after the cancel").hexdigest()}


# --- 4. raw HTTP ---------------------------------------------------------------------------------


def test_a_job_enqueued_with_raw_http_over_the_socket_runs_and_a_resubmit_with_its_key_is_idempotent(
    tmp_path: Path, sim: Sim
) -> None:
    with running_daemon(sim, tmp_path / "d") as daemon:
        repo = daemon.source / "r"
        sums = make_repo(repo, packs=3)
        body = {"source": str(repo), "destination": "Raw/host1", "idempotency_key": "plan-7/run-42"}
        status, headers, job = raw(daemon, "POST", "/v1/jobs", json.dumps(body).encode())
        assert status == 202, job
        assert headers["content-type"].startswith("application/json")
        assert headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["state"] == "queued" and job["destination"] == "/Raw/host1" and job["mode"] == "copy"

        def succeeded() -> dict[str, Any] | None:
            status, _, current = raw(daemon, "GET", f"/v1/jobs/{job['id']}")
            assert status == 200, current
            assert current["state"] in ("queued", "running", "succeeded"), current
            return current if current["state"] == "succeeded" else None

        done = poll("the job to succeed", succeeded, daemon=daemon)
        assert done["files_total"] == len(sums) and done["files_done"] == len(sums)
        assert {f["path"] for f in done["files"]} == set(sums)
        assert remote(sim, "Raw/host1") == sums

        again_status, again = post_job(daemon, body)
        assert again_status == 200 and again["id"] == job["id"] and again["state"] == "succeeded", again
        status, _, listing = raw(daemon, "GET", "/v1/jobs")
        assert status == 200 and [j["id"] for j in listing["jobs"]] == [job["id"]]


# --- 5. bad input -------------------------------------------------------------------------------


def test_each_bad_request_gets_a_4xx_json_error_naming_the_field_and_the_daemon_carries_on(
    tmp_path: Path, sim: Sim
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not for Box")
    with running_daemon(sim, tmp_path / "d") as daemon:
        src = daemon.source
        (src / "ok").mkdir()
        (src / "ok" / "data.bin").write_bytes(b"good data")
        (src / "escape").symlink_to(outside)
        (src / "ok" / "leak").symlink_to(outside / "secret.txt")  # inside a good source: left out
        good = {"source": str(src / "ok"), "destination": "Good"}

        def body(**fields: Any) -> bytes:
            return json.dumps({**good, **fields}).encode()

        no_destination = json.dumps({"source": str(src / "ok")}).encode()
        cases: list[tuple[str, bytes, int, str, str | None]] = [
            # name, body, status, code, field
            ("malformed JSON", b'{"source": "/x", ', 400, "invalid_json", None),
            ("not an object", b'["/x"]', 400, "invalid_body", None),
            ("missing source", json.dumps({"destination": "Good"}).encode(), 400, "missing_field", "source"),
            ("missing destination", no_destination, 400, "missing_field", "destination"),
            ("relative source", body(source="backups/ok"), 400, "invalid_field", "source"),
            ("dot-dot source", body(source=f"{src}/ok/../../../etc"), 400, "invalid_field", "source"),
            ("symlink escape", body(source=str(src / "escape")), 400, "invalid_source", "source"),
            ("outside allowed", body(source=str(outside)), 400, "invalid_source", "source"),
            ("no such source", body(source=str(src / "nope")), 400, "invalid_source", "source"),
            ("unknown mode", body(mode="sync"), 400, "invalid_field", "mode"),
            ("unknown on_conflict", body(on_conflict="overwrite"), 400, "invalid_field", "on_conflict"),
            ("unknown field", body(destinaton="Typo"), 400, "unknown_field", "destinaton"),
            ("priority as text", body(priority="high"), 400, "invalid_field", "priority"),
            ("oversized body", body(idempotency_key="k" * 70 * 1024), 413, "body_too_large", None),
        ]
        for name, payload, want_status, want_code, want_field in cases:
            status, headers, answer = raw(daemon, "POST", "/v1/jobs", payload)
            assert status == want_status, (name, status, answer)
            assert headers["content-type"].startswith("application/json"), name
            error = answer["error"]
            assert (error["code"], error["field"]) == (want_code, want_field), (name, error)
            assert isinstance(error["message"], str) and error["message"], name

        # The same shape for a chunked oversized body (no Content-Length), routes and methods.
        status, _, answer = raw(daemon, "POST", "/v1/jobs", b"x" * 70 * 1024, chunked=True)
        assert status == 413 and answer["error"]["code"] == "body_too_large", answer
        status, _, answer = raw(daemon, "GET", "/v1/nope")
        assert status == 404 and answer["error"]["code"] == "not_found", answer
        status, headers, answer = raw(daemon, "PUT", "/v1/jobs", body())
        assert status == 405 and answer["error"]["code"] == "method_not_allowed" and "allow" in headers, answer
        status, _, answer = raw(daemon, "GET", "/v1/jobs?limit=0")
        assert (status, answer["error"]["field"]) == (400, "limit"), answer
        status, _, answer = raw(daemon, "GET", "/v1/jobs/does-not-exist")
        assert status == 404 and answer["error"]["code"] == "not_found", answer

        assert daemon.process is not None and daemon.process.poll() is None
        status, _, listing = raw(daemon, "GET", "/v1/jobs")
        assert status == 200 and listing["jobs"] == [], "bad input must not create jobs"
        status, job = post_job(daemon, good)
        assert status == 202, job
        done = finished(daemon, job["id"])
        assert done["state"] == "succeeded", done
        assert remote(sim, "Good") == {"data.bin": hashlib.sha1(b"good data").hexdigest()}
        assert "not for Box" not in json.dumps(sim.state())


# --- 6. metrics and health ------------------------------------------------------------------------


def _sample(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"no sample {name}{labels} in:\n{text}"
    return float(match.group(1))


def test_metrics_after_an_upload_pass_promtool_and_count_the_work(tmp_path: Path, sim: Sim) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool (Debian package prometheus) is not installed")
    assert promtool is not None
    with running_daemon(sim, tmp_path / "d") as daemon:
        repo = daemon.source / "r"
        sums = make_repo(repo, packs=2)
        done = daemon.boxd("enqueue", str(repo), "--to", "Metrics", "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        status, text = daemon.http("/metrics")
        assert status == 200
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), (
            check.stdout + check.stderr
        )
        total = sum(len(b) for b in (p.read_bytes() for p in repo.rglob("*") if p.is_file()))
        assert _sample(text, "boxd_uploaded_bytes_total") == total > 0
        assert _sample(text, "boxd_jobs_total", '{outcome="succeeded"}') >= 1
        assert _sample(text, "boxd_files_total", '{outcome="uploaded"}') == len(sums)
        assert _sample(text, "boxd_auth_ok") == 1
        assert 'boxd_build_info{version="' in text
        assert "boxd_box_request_seconds_bucket{" in text

        status, body = daemon.http("/healthz")
        assert status == 200, body
        status, body = daemon.http("/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"] == {"store": "ok", "auth": "ok", "box": "ok"}
        status, body = daemon.http("/nope")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


# --- 7. systemd -----------------------------------------------------------------------------------


@dataclasses.dataclass
class WatchedDaemon(Daemon):
    """A daemon started as systemd would with ``WatchdogSec=``: extra environment for the child."""

    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, daemon: Daemon, env: dict[str, str]) -> WatchedDaemon:
        values = {f.name: getattr(daemon, f.name) for f in dataclasses.fields(daemon) if f.init}
        return cls(**values, env=env)

    def start(self, *, timeout: float = 30.0) -> None:
        # Daemon.start passes os.environ to the child: set ours around it (the child copies it at spawn).
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            super().start(timeout=timeout)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def receive(self) -> None:
        """Take one datagram from the notify socket (returns after at most 0.2 s)."""
        assert self._notify is not None
        with contextlib.suppress(TimeoutError):
            self.messages.append(self._notify.recv(4096).decode())


def test_the_daemon_pings_the_systemd_watchdog_and_says_stopping_on_sigterm(tmp_path: Path, sim: Sim) -> None:
    daemon = WatchedDaemon.of(write_daemon_config(sim, tmp_path / "d"), {"WATCHDOG_USEC": "2000000"})
    daemon.start()
    try:
        assert daemon.messages[0].splitlines()[0] == "READY=1", daemon.messages
        stamps: list[float] = []  # when each ping arrived

        def pings() -> bool:
            before = len(daemon.messages)
            daemon.receive()
            stamps.extend(time.monotonic() for m in daemon.messages[before:] if "WATCHDOG=1" in m.splitlines())
            return len(stamps) >= 4

        poll("four WATCHDOG=1 pings (every WatchdogSec/2 = 1 s)", pings, timeout=15, daemon=daemon)
        assert daemon.stop(signal.SIGTERM) == 0
        assert any(m.splitlines()[0] == "STOPPING=1" for m in daemon.messages), daemon.messages
        stopping = next(i for i, m in enumerate(daemon.messages) if m.startswith("STOPPING=1"))
        assert "READY=1" not in "".join(daemon.messages[stopping:])
        assert not daemon.socket_path.exists(), "the control socket is removed on a clean stop"
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.kill()


# --- 8. logs --------------------------------------------------------------------------------------


@pytest.fixture
def short_token_sim(tmp_path: Path) -> Iterator[Sim]:
    with running_sim(tmp_path / "sim", "--token-ttl", "3") as s:
        yield s


def test_logs_are_json_lines_with_stable_event_names_and_never_contain_secrets(
    tmp_path: Path, short_token_sim: Sim
) -> None:
    sim = short_token_sim
    secrets = {sim.credentials["client_secret"]}
    secrets |= {sim.credentials["token"]["access_token"], sim.credentials["token"]["refresh_token"]}
    with running_daemon(sim, tmp_path / "d") as daemon:
        repo = daemon.source / "r"
        make_repo(repo, packs=2)
        store = daemon.state_dir / "token.json"

        def remember_tokens() -> None:
            if store.exists():
                blob = json.loads(store.read_text())
                secrets.update({blob["access_token"], blob["refresh_token"]})

        def run_until_refreshed() -> bool:
            # Every run calls Box; tokens live 3 s and are renewed 1.5 s before they expire.
            run = daemon.boxd("enqueue", str(repo), "--to", "Logs", "--wait")
            assert run.returncode == 0, run.stdout + run.stderr
            remember_tokens()
            return bool(sim.stats()["token_grants"]["refresh_token"] >= 3)

        poll("three token refreshes", run_until_refreshed, timeout=45, daemon=daemon)
        # A bad request is logged too; its body (a made-up secret) must not be.
        post_job(daemon, {"source": str(repo), "destination": "Logs", "client_secret": "hunter2-in-a-body"})
        assert daemon.stop() == 0
        remember_tokens()

    text = daemon.log()
    lines = text.splitlines()
    assert lines, "the daemon logged nothing"
    events = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object (stdout is not a TTY)
        assert isinstance(record, dict), line
        assert re.fullmatch(r"[a-z][a-z0-9_]*", record["event"]), line
        assert record["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert "timestamp" in record, line
        events.append(record["event"])
    for wanted in (
        "queue_recovered",
        "daemon_ready",
        "job_enqueued",
        "job_started",
        "job_planned",
        "job_finished",
        "token_renewed",
        "control_request_refused",
        "daemon_stopping",
        "daemon_stopped",
    ):
        assert wanted in events, f"no {wanted} event in {sorted(set(events))}"
    finished_jobs = [json.loads(line) for line in lines if json.loads(line)["event"] == "job_finished"]
    assert all(r.get("job_id") for r in finished_jobs), "job events carry the job id"
    assert len(secrets) >= 6
    for secret in secrets | {"hunter2-in-a-body"}:
        assert secret not in text, "a secret leaked into the daemon's log"
