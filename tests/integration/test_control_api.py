"""The control API of DESIGN §3.2 on a real Unix socket, with the real SQLite store.

Every bad input is answered with the JSON error shape and a 4xx status and leaves the stored
jobs as they were; the CLI is run as a subprocess against the served app.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import pytest

from boxd.errors import ConfigError
from boxd.jobs.models import ErrorInfo, FileState, FileTask, Job, JobRequest, JobState
from boxd.jobs.store import JobStore, Store, StoreBusyError
from boxd.server.control import MAX_BODY, create_control_app, serve_control
from boxd.settings import DaemonSettings, Settings

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("control_child.py")


@pytest.fixture(autouse=True)
def no_blocking_calls_on_the_loop() -> Iterator[None]:
    """The control server must keep SQLite and file-system calls off the event loop."""
    try:
        from blockbuster import blockbuster_ctx
    except ImportError:  # optional test dependency
        yield
        return
    with blockbuster_ctx() as bb:
        for function in bb.functions.values():  # the test run's console log renderer reads source files
            function.can_block_in("structlog/dev.py", "__call__")
        yield


@dataclass
class FakeControl:
    """Records what the API asked of the scheduler."""

    wakes: int = 0
    cancelled: list[str] = field(default_factory=list)
    woken: anyio.Event = field(default_factory=anyio.Event)

    def wake(self) -> None:
        self.wakes += 1
        self.woken.set()

    async def cancel(self, job_id: str) -> None:
        self.cancelled.append(job_id)

    def status(self) -> dict[str, Any]:
        return {
            "auth": {"state": "ok", "method": "oauth", "refresh_token": "SECRET-REFRESH"},
            "paused": False,
            "transfers": [{"job_id": "j_x", "path": "data/pack", "size": 100, "bytes_done": 50}],
            "access_token": "SECRET-ACCESS",
        }


@dataclass
class Env:
    """One served control API: its socket, store, fake scheduler and source tree."""

    sock: Path
    store: Store
    control: FakeControl
    settings: Settings
    src: Path
    outside: Path
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.request(method, f"http://boxd{path}", **kw) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw), resp

    async def post_job(self, **fields: Any) -> tuple[int, Any]:
        body = {"source": str(self.src), "destination": "/Backups/host1", **fields}
        status, data, _ = await self.call("POST", "/v1/jobs", json=body)
        return status, data


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short directory for sockets: AF_UNIX paths are limited to ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bx", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """``src`` (the allowed source, with files and an escaping symlink) and ``outside``."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "repo" / "data").mkdir(parents=True)
    outside.mkdir()
    (src / "repo" / "config").write_bytes(b"cfg")
    (src / "repo" / "data" / "pack").write_bytes(b"x" * 100)
    (outside / "secret").write_text("not for Box")
    (src / "escape").symlink_to(outside)
    (src / "escape-file").symlink_to(outside / "secret")
    (src / "inner-link").symlink_to(src / "repo")
    (tmp_path / "state").mkdir()
    return src, outside


def make_settings(sockdir: Path, src: Path, tmp_path: Path, mode: int = 0o660) -> Settings:
    daemon = {"socket": sockdir / "run" / "c.sock", "socket_mode": mode, "allowed_sources": [src]}
    return Settings(daemon=DaemonSettings.model_validate(daemon | {"state_dir": tmp_path / "state"}))


@pytest.fixture
async def env(tmp_path: Path, sockdir: Path, tree: tuple[Path, Path]) -> AsyncIterator[Env]:
    src, outside = tree
    settings = make_settings(sockdir, src, tmp_path)
    store = await Store.open(tmp_path / "state" / "boxd.db")
    control = FakeControl()
    app = create_control_app(store, control, settings, started_at=time.time() - 90, version="9.9.9")
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, app, settings)
        connector = aiohttp.UnixConnector(path=str(settings.daemon.socket))
        async with aiohttp.ClientSession(connector=connector) as http:
            yield Env(settings.daemon.socket, store, control, settings, src, outside, http)
        tg.cancel_scope.cancel()
    await store.close()


async def snapshot(store: JobStore) -> list[tuple[Job, list[FileTask]]]:
    return [(job, await store.job_files(job.id)) for job in await store.list_jobs(limit=1000)]


async def make_failed(store: JobStore, src: Path) -> Job:
    """A job that ran one file, which failed (top priority: claimed before any other queued job)."""
    job, _ = await store.create_job(JobRequest.parse({"source": str(src), "destination": "/F", "priority": 100}))
    claimed = await store.claim_next_job(time.time())
    assert claimed is not None and claimed.id == job.id
    await store.set_plan(job.id, [FileTask(rel_path="repo/config", size=3)])
    (task,) = await store.pending_files(job.id, 10)
    await store.start_file(task.id)
    await store.finish_file(task.id, FileState.FAILED, error=ErrorInfo("boom", "it broke"))
    return await store.finish_job(job.id, time.time())


# --- POST /v1/jobs ------------------------------------------------------------------------


async def test_enqueue_answers_202_with_the_job_already_on_disk(env: Env, tmp_path: Path) -> None:
    status, job = await env.post_job(mode="mirror", priority=5)
    assert status == 202
    assert job["state"] == "queued" and job["id"].startswith("j_")
    assert job["source"] == str(env.src) and job["destination"] == "/Backups/host1"
    assert job["mode"] == "mirror" and job["on_conflict"] == "version" and job["priority"] == 5
    assert job["error"] is None and job["files_total"] == 0 and job["created_at"].endswith("Z")
    assert env.control.wakes == 1
    # A second connection to the database file sees it: it was committed before the answer.
    other = await Store.open(tmp_path / "state" / "boxd.db")
    try:
        stored = await other.get_job(job["id"])
    finally:
        await other.close()
    assert stored is not None and stored.to_api() == job


async def test_enqueue_sets_location_and_accepts_folder_id_and_files(env: Env) -> None:
    body = {"source": str(env.src / "repo" / "config"), "folder_id": "12345", "on_conflict": "skip"}
    status, job, resp = await env.call("POST", "/v1/jobs", json=body)
    assert status == 202 and job["folder_id"] == "12345" and job["destination"] is None
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    # a symlink that stays inside allowed_sources is fine
    status, job = await env.post_job(source=str(env.src / "inner-link"))
    assert status == 202


async def test_idempotent_resubmit_returns_the_existing_job(env: Env) -> None:
    status1, first = await env.post_job(idempotency_key="nightly-2024-06-01")
    status2, second = await env.post_job(idempotency_key="nightly-2024-06-01", priority=9)
    assert (status1, status2) == (202, 200)
    assert second == first
    assert [j.id for j in await env.store.list_jobs()] == [first["id"]]
    assert env.control.wakes == 1
    status3, third = await env.post_job(idempotency_key="nightly-2024-06-02")
    assert status3 == 202 and third["id"] != first["id"]


def _bad_bodies() -> list[Any]:
    s = "{src}"
    ok = {"source": s, "destination": "/B"}
    cases: list[Any] = [
        ("malformed", b'{"source": ', 400, "invalid_json", None),
        ("empty", b"", 400, "invalid_json", None),
        ("not utf-8", b'{"source": "\xff\xfe"}', 400, "invalid_json", None),
        ("NaN", b'{"source": "{src}", "destination": "/B", "priority": NaN}', 400, "invalid_json", None),
        ("deep", b"[" * 40000, 400, "invalid_json", None),
        ("huge int", b'{"priority": ' + b"9" * 5000 + b"}", 400, "invalid_json", None),
        ("duplicate", b'{"source": "/a", "source": "{src}", "destination": "/B"}', 400, "invalid_json", "source"),
        ("array", b"[1, 2]", 400, "invalid_body", None),
        ("string", b'"hello"', 400, "invalid_body", None),
        ("null", b"null", 400, "invalid_body", None),
        ("unknown field", {**ok, "colour": "red"}, 400, "unknown_field", "colour"),
        ("typo", {**ok, "prority": 3}, 400, "unknown_field", "prority"),
        ("no source", {"destination": "/B"}, 400, "missing_field", "source"),
        ("no destination", {"source": s}, 400, "missing_field", "destination"),
        ("both", {**ok, "folder_id": "5"}, 400, "invalid_field", "folder_id"),
        ("source type", {**ok, "source": 5}, 400, "invalid_field", "source"),
        ("destination type", {**ok, "destination": ["B"]}, 400, "invalid_field", "destination"),
        ("priority type", {**ok, "priority": "high"}, 400, "invalid_field", "priority"),
        ("priority bool", {**ok, "priority": True}, 400, "invalid_field", "priority"),
        ("priority range", {**ok, "priority": 1000}, 400, "invalid_field", "priority"),
        ("folder id", {"source": s, "folder_id": "abc"}, 400, "invalid_field", "folder_id"),
        ("relative", {**ok, "source": "srv/backup"}, 400, "invalid_field", "source"),
        ("dotdot", {**ok, "source": s + "/../outside"}, 400, "invalid_field", "source"),
        ("dotdot destination", {**ok, "destination": "/B/../../x"}, 400, "invalid_field", "destination"),
        ("unknown mode", {**ok, "mode": "sync"}, 400, "invalid_field", "mode"),
        ("unknown on_conflict", {**ok, "on_conflict": "overwrite"}, 400, "invalid_field", "on_conflict"),
        ("symlink escape dir", {**ok, "source": s + "/escape"}, 400, "invalid_source", "source"),
        ("symlink escape file", {**ok, "source": s + "/escape-file"}, 400, "invalid_source", "source"),
        ("outside", {**ok, "source": "{outside}"}, 400, "invalid_source", "source"),
        ("missing", {**ok, "source": s + "/nope"}, 400, "invalid_source", "source"),
        ("oversized", b'{"source": "' + b"a" * MAX_BODY + b'"}', 413, "body_too_large", None),
    ]
    return [pytest.param(*c[1:], id=c[0]) for c in cases]


def _fill(body: Any, env: Env) -> Any:
    if isinstance(body, bytes):
        return body.replace(b"{src}", str(env.src).encode())
    text = json.dumps(body).replace("{src}", str(env.src)).replace("{outside}", str(env.outside))
    return text.encode()


@pytest.mark.parametrize(("body", "status", "code", "field"), _bad_bodies())
async def test_bad_job_requests_are_refused_and_change_nothing(
    env: Env, body: Any, status: int, code: str, field: str | None
) -> None:
    await make_failed(env.store, env.src)
    await env.post_job()
    before = await snapshot(env.store)
    wakes = env.control.wakes
    got, data, resp = await env.call("POST", "/v1/jobs", data=_fill(body, env))
    assert (got, data["error"]["code"], data["error"]["field"]) == (status, code, field), data
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "field"}
    assert data["error"]["message"] and resp.content_type == "application/json"
    assert await snapshot(env.store) == before
    assert env.control.wakes == wakes
    # the daemon is unaffected: the next good request works
    assert (await env.post_job())[0] == 202


async def test_oversized_chunked_body_is_refused(env: Env) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"source": "'
        for _ in range(MAX_BODY // 4096 + 1):
            yield b"a" * 4096
        yield b'"}'

    status, data, _ = await env.call("POST", "/v1/jobs", data=chunks())
    assert status == 413 and data["error"]["code"] == "body_too_large"
    assert await env.store.list_jobs() == []


async def test_no_allowed_sources_refuses_every_source(tmp_path: Path, sockdir: Path, tree: tuple[Path, Path]) -> None:
    settings = Settings(daemon=DaemonSettings.model_validate({"socket": sockdir / "n.sock"}))
    store = await Store.open(tmp_path / "state" / "boxd.db")
    app = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, app, settings)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sockdir / "n.sock"))) as http:
            body = {"source": str(tree[0]), "destination": "/B"}
            async with http.post("http://boxd/v1/jobs", json=body) as resp:
                data = await resp.json()
        tg.cancel_scope.cancel()
    await store.close()
    assert resp.status == 400 and data["error"]["code"] == "invalid_source"
    assert "allowed_sources is empty" in data["error"]["message"]


# --- routes and methods -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/", 404, "not_found"),
        ("GET", "/v2/jobs", 404, "not_found"),
        ("GET", "/v1/jobs/", 404, "not_found"),
        ("GET", "/v1/jobs/j_nope", 404, "not_found"),
        ("DELETE", "/v1/jobs/j_nope", 404, "not_found"),
        ("POST", "/v1/jobs/j_nope/retry", 404, "not_found"),
        ("PUT", "/v1/jobs", 405, "method_not_allowed"),
        ("PATCH", "/v1/jobs/j_x", 405, "method_not_allowed"),
        ("DELETE", "/v1/status", 405, "method_not_allowed"),
        ("GET", "/v1/jobs/j_x/retry", 405, "method_not_allowed"),
    ],
)
async def test_unknown_routes_and_methods(env: Env, method: str, path: str, status: int, code: str) -> None:
    await env.post_job()
    before = await snapshot(env.store)
    got, data, resp = await env.call(method, path)
    assert (got, data["error"]["code"], data["error"]["field"]) == (status, code, None)
    if status == 405:
        assert resp.headers["Allow"]
    assert await snapshot(env.store) == before


# --- GET /v1/jobs -------------------------------------------------------------------------


async def test_list_newest_first_with_state_and_limit(env: Env) -> None:
    req = JobRequest.parse({"source": str(env.src), "destination": "/B"})
    ids = [(await env.store.create_job(req, now=1_700_000_000 + i))[0].id for i in range(3)]
    await env.store.cancel_job(ids[1], time.time())
    status, data, _ = await env.call("GET", "/v1/jobs")
    assert status == 200 and [j["id"] for j in data["jobs"]] == ids[::-1]
    assert "files" not in data["jobs"][0]
    _, data, _ = await env.call("GET", "/v1/jobs?state=queued")
    assert [j["id"] for j in data["jobs"]] == [ids[2], ids[0]]
    _, data, _ = await env.call("GET", "/v1/jobs?limit=1")
    assert [j["id"] for j in data["jobs"]] == [ids[2]]
    _, data, _ = await env.call("GET", "/v1/jobs?state=cancelled&limit=1000")
    assert [j["id"] for j in data["jobs"]] == [ids[1]]
    _, data, _ = await env.call("GET", "/v1/jobs?state=&limit=")  # empty means not given
    assert len(data["jobs"]) == 3


@pytest.mark.parametrize(
    ("query", "code", "field"),
    [
        ("limit=0", "invalid_field", "limit"),
        ("limit=1001", "invalid_field", "limit"),
        ("limit=-1", "invalid_field", "limit"),
        ("limit=abc", "invalid_field", "limit"),
        ("limit=1.5", "invalid_field", "limit"),
        ("limit=%EF%BC%91", "invalid_field", "limit"),  # a full-width digit one
        ("limit=00000000001", "invalid_field", "limit"),
        ("limit=1&limit=2", "invalid_field", "limit"),
        ("state=done", "invalid_field", "state"),
        ("state=QUEUED", "invalid_field", "state"),
        ("sort=asc", "unknown_field", "sort"),
    ],
)
async def test_bad_list_queries(env: Env, query: str, code: str, field: str) -> None:
    status, data, _ = await env.call("GET", f"/v1/jobs?{query}")
    assert (status, data["error"]["code"], data["error"]["field"]) == (400, code, field)


# --- GET /v1/jobs/{id} --------------------------------------------------------------------


async def test_show_has_file_detail_and_files_false_leaves_it_out(env: Env) -> None:
    job = await make_failed(env.store, env.src)
    status, data, _ = await env.call("GET", f"/v1/jobs/{job.id}")
    assert status == 200 and data["state"] == "failed" and data["files_failed"] == 1
    assert data["error"]["code"] == "files_failed"
    (f,) = data["files"]
    assert f["path"] == "repo/config" and f["size"] == 3 and f["state"] == "failed"
    assert f["error"] == {"code": "boom", "message": "it broke"} and f["box_file_id"] is None and "sha1" in f
    _, brief, _ = await env.call("GET", f"/v1/jobs/{job.id}?files=false")
    assert "files" not in brief and brief == {k: v for k, v in data.items() if k != "files"}
    status, bad, _ = await env.call("GET", f"/v1/jobs/{job.id}?files=maybe")
    assert (status, bad["error"]["field"]) == (400, "files")
    status, bad, _ = await env.call("GET", f"/v1/jobs/{job.id}?verbose=1")
    assert (status, bad["error"]["code"]) == (400, "unknown_field")


# --- DELETE /v1/jobs/{id} and POST /v1/jobs/{id}/retry ------------------------------------


async def test_cancel_queued_and_running_jobs_then_409(env: Env) -> None:
    _, queued = await env.post_job()
    status, data, _ = await env.call("DELETE", f"/v1/jobs/{queued['id']}")
    assert status == 200 and data["state"] == "cancelled" and data["finished_at"]
    assert env.control.cancelled == [queued["id"]]

    _, running = await env.post_job(idempotency_key="r")
    assert (await env.store.claim_next_job(time.time())) is not None
    await env.store.set_plan(running["id"], [FileTask(rel_path="repo/config", size=3)])
    status, data, _ = await env.call("DELETE", f"/v1/jobs/{running['id']}")
    assert status == 200 and data["state"] == "cancelled"
    assert [f.state for f in await env.store.job_files(running["id"])] == [FileState.CANCELLED]
    assert env.control.cancelled == [queued["id"], running["id"]]

    before = await snapshot(env.store)
    status, data, _ = await env.call("DELETE", f"/v1/jobs/{queued['id']}")
    assert (status, data["error"]["code"], data["error"]["field"]) == (409, "invalid_state", None)
    assert "cancelled" in data["error"]["message"]
    assert await snapshot(env.store) == before and len(env.control.cancelled) == 2


async def test_cancel_of_a_finished_job_is_409(env: Env) -> None:
    job = await make_failed(env.store, env.src)
    status, data, _ = await env.call("DELETE", f"/v1/jobs/{job.id}")
    assert (status, data["error"]["code"]) == (409, "invalid_state")
    assert env.control.cancelled == []


async def test_retry_only_failed_jobs(env: Env) -> None:
    job = await make_failed(env.store, env.src)
    wakes = env.control.wakes
    status, data, _ = await env.call("POST", f"/v1/jobs/{job.id}/retry")
    assert status == 202 and data["state"] == "queued" and data["error"] is None
    assert [f.state for f in await env.store.job_files(job.id)] == [FileState.PENDING]
    assert env.control.wakes == wakes + 1

    before = await snapshot(env.store)
    status, data, _ = await env.call("POST", f"/v1/jobs/{job.id}/retry")  # queued now
    assert (status, data["error"]["code"]) == (409, "invalid_state")
    await env.call("DELETE", f"/v1/jobs/{job.id}")
    status, data, _ = await env.call("POST", f"/v1/jobs/{job.id}/retry")  # cancelled
    assert (status, data["error"]["code"]) == (409, "invalid_state")
    assert env.control.wakes == wakes + 1 and before[0][0].state is JobState.QUEUED


# --- GET /v1/status -----------------------------------------------------------------------


async def test_status_reports_version_uptime_counts_and_no_secret(env: Env) -> None:
    await env.post_job()
    await make_failed(env.store, env.src)
    status, data, _ = await env.call("GET", "/v1/status")
    assert status == 200
    assert data["version"] == "9.9.9" and 90 <= data["uptime_seconds"] < 200 and data["started_at"].endswith("Z")
    assert data["jobs"] == {"queued": 1, "running": 0, "succeeded": 0, "failed": 1, "cancelled": 0}
    assert data["auth"]["state"] == "ok" and data["transfers"][0]["bytes_done"] == 50
    text = json.dumps(data)
    assert "SECRET" not in text and data["access_token"] == "[redacted]"
    status, data, _ = await env.call("GET", "/v1/status?x=1")
    assert (status, data["error"]["code"]) == (400, "unknown_field")


# --- internal failures --------------------------------------------------------------------


class BrokenStore:
    """A store whose reads fail: a real internal failure, or a busy database."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def list_jobs(self, state: JobState | None = None, limit: int = 100) -> list[Job]:
        raise self.exc

    async def counts(self) -> dict[str, int]:
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "status", "code"), [(RuntimeError("disk on fire"), 500, "internal_error"), (StoreBusyError(), 503, "busy")]
)
async def test_internal_failures_are_5xx_in_the_same_shape(
    sockdir: Path, tree: tuple[Path, Path], tmp_path: Path, exc: Exception, status: int, code: str
) -> None:
    settings = make_settings(sockdir, tree[0], tmp_path)
    store: Any = BrokenStore(exc)
    app = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, app, settings)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(settings.daemon.socket))) as http:
            for path in ("/v1/jobs", "/v1/status"):
                async with http.get(f"http://boxd{path}") as resp:
                    data = await resp.json()
                assert resp.status == status and data["error"]["code"] == code and data["error"]["field"] is None
                assert "fire" not in data["error"]["message"]
        tg.cancel_scope.cancel()


# --- the socket ---------------------------------------------------------------------------


async def _mode_of(path: Path) -> int:
    st = await anyio.to_thread.run_sync(os.lstat, path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


async def _exists(path: Path) -> bool:
    return await anyio.to_thread.run_sync(os.path.lexists, path)


@pytest.mark.parametrize("mode", [0o660, 0o600, 0o666])
async def test_socket_mode_is_applied_and_file_removed_at_stop(
    sockdir: Path, tree: tuple[Path, Path], tmp_path: Path, mode: int
) -> None:
    settings = make_settings(sockdir, tree[0], tmp_path, mode=mode)
    store = await Store.open(tmp_path / "state" / "boxd.db")
    app = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
    path = settings.daemon.socket
    assert not await _exists(path.parent)  # created on demand
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, app, settings)
        assert await _mode_of(path) == mode
        assert await anyio.to_thread.run_sync(os.listdir, path.parent) == [path.name]  # no temporary left
        tg.cancel_scope.cancel()
    await store.close()
    assert not await _exists(path)


def _dead_socket(path: Path) -> None:
    """A socket file whose process is gone: bound, never listening, closed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()


async def test_stale_socket_is_replaced_but_a_live_one_or_a_file_is_not(
    sockdir: Path, tree: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = make_settings(sockdir, tree[0], tmp_path)
    path = settings.daemon.socket
    await anyio.to_thread.run_sync(lambda: path.parent.mkdir())
    await anyio.to_thread.run_sync(_dead_socket, path)
    store = await Store.open(tmp_path / "state" / "boxd.db")
    app = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
    async with anyio.create_task_group() as tg:
        await tg.start(serve_control, app, settings)
        # a second server on the same path must refuse, and leave the first one's socket alone
        second = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
        with pytest.raises(ConfigError, match="another process listens"):
            await serve_control(second, settings)
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http,
            http.get("http://boxd/v1/status") as resp,
        ):
            assert resp.status == 200
        tg.cancel_scope.cancel()
    await anyio.to_thread.run_sync(path.write_text, "precious")
    with pytest.raises(ConfigError, match="not a socket"):
        await serve_control(app, settings)
    assert await anyio.to_thread.run_sync(path.read_text) == "precious"
    await store.close()


async def test_socket_path_too_long_is_a_clear_config_error(tmp_path: Path, tree: tuple[Path, Path]) -> None:
    settings = Settings(daemon=DaemonSettings.model_validate({"socket": "/tmp/" + "x" * 120 + ".sock"}))
    store = await Store.open(tmp_path / "state" / "boxd.db")
    app = create_control_app(store, FakeControl(), settings, started_at=time.time(), version="t")
    with pytest.raises(ConfigError, match=r"daemon\.socket: .* 107 bytes"):
        await serve_control(app, settings)
    await store.close()


async def test_socket_activation_uses_the_passed_socket(sockdir: Path, tree: tuple[Path, Path], tmp_path: Path) -> None:
    """As systemd's boxd.socket does: the listening socket is passed as fd 3 with LISTEN_FDS."""
    path = sockdir / "act.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    await anyio.to_thread.run_sync(os.chmod, path, 0o600)
    listener.listen(16)
    unused = sockdir / "unused" / "never.sock"
    args = [sys.executable, str(CHILD), str(listener.fileno()), str(tmp_path / "state" / "boxd.db"), str(unused)]
    args.append(str(tree[0]))
    try:
        with anyio.fail_after(60):
            async with await anyio.open_process(args, pass_fds=[listener.fileno()], cwd=REPO) as proc:
                async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http:
                    body = {"source": str(tree[0]), "destination": "/B"}
                    async with http.post("http://boxd/v1/jobs", json=body) as resp:
                        assert resp.status == 202, await resp.text()
                    async with http.get("http://boxd/v1/jobs") as resp:
                        assert len((await resp.json())["jobs"]) == 1
                assert proc.stdin is not None
                await proc.stdin.aclose()  # the child stops on EOF
                assert await proc.wait() == 0
    finally:
        listener.close()
    assert await _mode_of(path) == 0o600  # systemd's SocketMode, untouched; the file is systemd's
    assert not await _exists(unused.parent)  # daemon.socket was not used


# --- the CLI against the served API -------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str


async def boxd(*args: str, env: dict[str, str] | None = None) -> Run:
    """``python -m boxd ARGS`` as a subprocess, without blocking the loop serving the API."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("BOXD_")}
    proc = await anyio.run_process(
        [sys.executable, "-m", "boxd", *args], cwd=REPO, env={**base, **(env or {})}, check=False
    )
    return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


async def test_cli_enqueue_jobs_show_cancel_status(env: Env, tmp_path: Path) -> None:
    s = str(env.sock)
    run = await boxd("enqueue", str(env.src), "--to", "/Backups/host1", "--key", "k1", "--socket", s)
    assert run.code == 0, run.err
    assert run.out.startswith("queued job j_") and f"{env.src} → /Backups/host1 (copy)" in run.out
    job_id = run.out.split()[2].rstrip(":")

    run = await boxd("enqueue", str(env.src), "--to", "/Backups/host1", "--key", "k1", "--socket", s)
    assert run.code == 0 and f"job {job_id} already exists for idempotency key 'k1'" in run.out

    run = await boxd("jobs", "--socket", s, "--json")
    assert run.code == 0, run.err
    (listed,) = json.loads(run.out)["jobs"]
    assert listed["id"] == job_id and listed["state"] == "queued"

    run = await boxd("jobs", env={"BOXD_SOCKET": s})  # the environment names the socket
    header, row = run.out.splitlines()
    assert header.split() == ["ID", "STATE", "CREATED", "FILES", "BYTES", "SOURCE", "DESTINATION"]
    assert row.startswith(job_id) and " queued " in row and row.endswith(f"{env.src}  /Backups/host1")

    config = tmp_path / "boxd.toml"
    await anyio.to_thread.run_sync(config.write_text, f'[daemon]\nsocket = "{s}"\n')
    run = await boxd("show", job_id, "--config", str(config))  # the configuration names it
    assert run.code == 0, run.err
    assert f"job:         {job_id}" in run.out and "state:       queued" in run.out

    run = await boxd("status", "--socket", s)
    assert run.code == 0 and "boxd 9.9.9 on " in run.out and "queue:" in run.out and "1 queued" in run.out
    assert "SECRET" not in run.out

    run = await boxd("cancel", job_id, "--socket", s)
    assert (run.code, run.out.strip()) == (0, f"job {job_id} cancelled")
    run = await boxd("cancel", job_id, "--socket", s)
    assert run.code == 1 and "[invalid_state]" in run.err
    run = await boxd("retry", job_id, "--socket", s, "--json")
    assert run.code == 1 and "only failed jobs can be retried" in run.err


async def test_cli_refusals_and_unreachable_daemon(env: Env, sockdir: Path) -> None:
    s = str(env.sock)
    run = await boxd("enqueue", str(env.src / "escape"), "--to", "/B", "--socket", s)
    assert run.code == 1 and run.err.startswith("boxd enqueue: source: ") and "[invalid_source]" in run.err
    run = await boxd("show", "j_nope", "--socket", s)
    assert run.code == 1 and "[not_found]" in run.err
    run = await boxd("jobs", "--socket", str(sockdir / "nobody.sock"))
    assert run.code == 3 and "no daemon socket at" in run.err
    run = await boxd("enqueue", str(env.src), "--socket", s)  # --to or --folder-id is required
    assert run.code == 2
    assert await env.store.list_jobs() == []


async def drive(store: JobStore, job_id: str, *, fail: bool) -> None:
    """Play the scheduler: claim the job, plan two files, run them."""
    claimed = await store.claim_next_job(time.time())
    assert claimed is not None and claimed.id == job_id
    await store.set_plan(
        job_id, [FileTask(rel_path="repo/config", size=3), FileTask(rel_path="repo/data/pack", size=100)]
    )
    for task in await store.pending_files(job_id, 10):
        await store.start_file(task.id)
        if fail and task.rel_path == "repo/config":
            await store.finish_file(task.id, FileState.FAILED, error=ErrorInfo("box_refused", "Box said no"))
        else:
            await store.finish_file(task.id, FileState.DONE, box_file_id="42")
    await store.finish_job(job_id, time.time())


async def _wait_run(env: Env, fail: bool) -> Run:
    result: list[Run] = []

    async def client() -> None:
        result.append(await boxd("enqueue", str(env.src), "--to", "/B", "--wait", "--socket", str(env.sock)))

    env.control.woken = anyio.Event()
    async with anyio.create_task_group() as inner:
        inner.start_soon(client)
        await env.control.woken.wait()  # the job is queued: play the scheduler
        (job,) = await env.store.list_jobs(JobState.QUEUED)
        await drive(env.store, job.id, fail=fail)
    return result[0]


async def test_cli_enqueue_wait_follows_the_job_to_its_end(env: Env) -> None:
    with anyio.fail_after(60):
        ok = await _wait_run(env, fail=False)
        bad = await _wait_run(env, fail=True)
    assert ok.code == 0, ok.err
    lines = ok.out.splitlines()
    assert lines[0].startswith("queued job j_")
    assert any(" queued: 0/0 files, 0 B/0 B, 0 B/s, ETA -:--" in line for line in lines)  # plain lines: not a TTY
    assert lines[-1].startswith("job j_") and " succeeded: 2 files (2 done, 0 skipped), 103 B in " in lines[-1]
    assert bad.code == 1
    assert "failed: files_failed: 1 file failed: repo/config: Box said no" in bad.err
