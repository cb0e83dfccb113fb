"""The control API's client (HTTP over the Unix socket) and the CLI commands built on it:
``enqueue``, ``jobs``, ``show``, ``cancel``, ``retry``, ``status`` (DESIGN §3.1).

The socket is ``--socket``, else ``BOXD_SOCKET``, else ``daemon.socket`` of the configuration
(``--config``, ``BOXD_CONFIG``, ``/etc/boxd/boxd.toml``). Each command prints a readable
table or summary, or with ``--json`` the API's answer unchanged. ``enqueue --wait`` polls the
job twice a second and shows a progress bar on a terminal, plain lines otherwise.

Exit status: 0 done; 1 the daemon refused the request, or the waited-for job failed or was
cancelled; 2 bad usage or configuration; 3 the daemon cannot be reached or answered nonsense;
130 interrupted while waiting (the job goes on in the daemon).

The renderers live in :mod:`boxd.render`.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import anyio

from boxd import __version__
from boxd.errors import BoxdError, ConfigError, ProtocolError
from boxd.render import (
    FINISHED,
    PlainView,
    ProgressView,
    RateMeter,
    RichView,
    enqueued_text,
    final_line,
    job_text,
    jobs_text,
    status_text,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Seconds between polls of ``enqueue --wait``.
POLL_INTERVAL = 0.5
#: ``enqueue --wait`` gives up after the daemon has been unreachable this long (it may restart).
UNREACHABLE_GIVE_UP = 60.0


# --- errors and the socket ----------------------------------------------------------------


class ApiError(BoxdError):
    """The daemon refused the request (an error answer of DESIGN §3.2)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{where}{self.args[0]} [{self.code}]"


class DaemonUnreachableError(BoxdError):
    """The daemon's socket cannot be reached."""


def socket_path(socket: Path | None = None, config: Path | None = None) -> Path:
    """``--socket``, else ``BOXD_SOCKET``, else the configured ``daemon.socket``."""
    if socket is not None:
        return socket
    env = os.environ.get("BOXD_SOCKET")
    if env:
        return Path(env)
    from boxd.settings import load_settings

    try:
        return load_settings(config).daemon.socket
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc} (or pass --socket / set BOXD_SOCKET)") from None


def _unreachable(socket: Path, exc: OSError | None) -> DaemonUnreachableError:
    code = exc.errno if exc is not None else None
    if code == errno.ENOENT:
        why = f"no daemon socket at {socket} (is boxd running? pass --socket or set BOXD_SOCKET)"
    elif code in (errno.EACCES, errno.EPERM):
        why = f"permission denied on {socket}: run as root or as a member of the socket's group"
    elif code == errno.ECONNREFUSED:
        why = f"nothing listens on {socket} (is boxd running?)"
    else:
        why = f"cannot reach the daemon at {socket}: {exc.strerror if exc and exc.strerror else exc}"
    return DaemonUnreachableError(why)


# --- the client ---------------------------------------------------------------------------


class ControlClient:
    """An async client of the control API on ``socket``; use it as an async context manager."""

    def __init__(self, socket: Path, *, timeout: float = 30.0) -> None:
        self.socket = socket
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)),
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": f"boxd-cli/{__version__}"},
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """``(status, JSON object)`` of a 2xx answer; :class:`ApiError` for an error answer."""
        if self._session is None:
            raise RuntimeError("use ControlClient as an async context manager")
        try:
            async with self._session.request(
                method, f"http://boxd{path}", json=body, params=params
            ) as resp:  # the host is ignored: the connector talks to the socket
                status, raw = resp.status, await resp.read()
        except aiohttp.ClientConnectorError as exc:
            raise _unreachable(self.socket, exc.os_error) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
            raise DaemonUnreachableError(f"the daemon at {self.socket} did not answer: {why}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if status >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict) and isinstance(err.get("code"), str):
                raise ApiError(status, err["code"], str(err.get("message", "")), err.get("field"))
            raise ApiError(status, f"http_{status}", raw[:200].decode("utf-8", "replace"))
        if not isinstance(data, dict):
            raise ProtocolError(f"the daemon at {self.socket} answered {method} {path} with something not JSON")
        return status, data

    async def enqueue(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """``(job, created)``: created is False when the idempotency key matched an existing job."""
        status, job = await self.request("POST", "/v1/jobs", body=dict(body))
        return job, status == 202

    async def jobs(self, state: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        params = {k: str(v) for k, v in (("state", state), ("limit", limit)) if v is not None}
        _, data = await self.request("GET", "/v1/jobs", params=params)
        jobs = data.get("jobs")
        if not isinstance(jobs, list):
            raise ProtocolError("the daemon's job list has no 'jobs' array")
        return jobs

    async def job(self, job_id: str, *, files: bool = True) -> dict[str, Any]:
        params = None if files else {"files": "false"}
        return (await self.request("GET", f"/v1/jobs/{_quote(job_id)}", params=params))[1]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return (await self.request("DELETE", f"/v1/jobs/{_quote(job_id)}"))[1]

    async def retry(self, job_id: str) -> dict[str, Any]:
        return (await self.request("POST", f"/v1/jobs/{_quote(job_id)}/retry"))[1]

    async def status(self) -> dict[str, Any]:
        return (await self.request("GET", "/v1/status"))[1]


def _quote(job_id: str) -> str:
    from urllib.parse import quote

    return quote(job_id, safe="")


def request_body(
    source: str,
    *,
    destination: str | None = None,
    folder_id: str | None = None,
    mode: str | None = None,
    on_conflict: str | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body for ``boxd enqueue``; a relative SOURCE is taken from the current
    directory (the daemon resolves links and checks ``allowed_sources``); unset options are left out."""
    body: dict[str, Any] = {"source": os.path.abspath(source)}
    optional = {
        "destination": destination,
        "folder_id": folder_id,
        "mode": mode,
        "on_conflict": on_conflict,
        "idempotency_key": idempotency_key,
        "priority": priority,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


# --- the commands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where the daemon is: the ``--socket`` and ``--config`` flags of a client command."""

    socket: Path | None = None
    config: Path | None = None


def _fail(name: str, message: object) -> None:
    print(f"boxd {name}: {message}", file=sys.stderr)


def _run(name: str, target: Target, body: Callable[[ControlClient], Awaitable[int]]) -> int:
    """Resolve the socket, run ``body`` with a client, turn errors into messages and exit codes."""
    try:
        path = socket_path(target.socket, target.config)
    except ConfigError as exc:
        _fail(name, exc)
        return EXIT_USAGE

    async def main() -> int:
        async with ControlClient(path) as client:
            return await body(client)

    try:
        return anyio.run(main)
    except ApiError as exc:
        _fail(name, exc)
        return EXIT_FAILED
    except (DaemonUnreachableError, ProtocolError) as exc:
        _fail(name, exc)
        return EXIT_UNREACHABLE


def _emit(data: Any, text: Callable[[], str], as_json: bool) -> None:
    """Print the API's answer as JSON, or its readable rendering."""
    print(json.dumps(data, indent=2, ensure_ascii=False) if as_json else text())


def cmd_enqueue(target: Target, body: Mapping[str, Any], *, wait: bool = False, as_json: bool = False) -> int:
    """``boxd enqueue``: submit the job; with ``wait``, follow it to its end."""
    interrupted: list[str] = []

    async def run(client: ControlClient) -> int:
        job, created = await client.enqueue(body)
        if not wait:
            _emit(job, lambda: enqueued_text(job, created), as_json)
            return EXIT_OK
        if not as_json:
            print(enqueued_text(job, created), flush=True)
        interrupted.append(str(job["id"]))
        view: ProgressView | None = None
        if not as_json:
            view = RichView(str(job["id"])) if sys.stdout.isatty() else PlainView(sys.stdout)
        start = time.monotonic()
        try:
            job = await wait_for(client, job, view)
        finally:
            if view is not None:
                view.close()
        if as_json:
            _emit(job, str, True)
        else:
            print(
                final_line(job, time.monotonic() - start),
                file=sys.stdout if job["state"] == "succeeded" else sys.stderr,
            )
        return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED

    try:
        return _run("enqueue", target, run)
    except KeyboardInterrupt:
        if interrupted:
            _fail(
                "enqueue", f"stopped waiting; job {interrupted[0]} goes on in the daemon (boxd show {interrupted[0]})"
            )
        return EXIT_INTERRUPTED


async def wait_for(
    client: ControlClient, job: dict[str, Any], view: ProgressView | None, *, interval: float = POLL_INTERVAL
) -> dict[str, Any]:
    """Poll the job until it has finished, feeding ``view``; tolerates a restarting daemon for
    :data:`UNREACHABLE_GIVE_UP` seconds."""
    meter = RateMeter()
    meter.add(time.monotonic(), job)
    if view is not None:
        view.update(job, meter)
    down_since: float | None = None
    while job.get("state") not in FINISHED:
        await anyio.sleep(interval)
        try:
            job = await client.job(str(job["id"]), files=False)
        except DaemonUnreachableError as exc:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                if view is not None:
                    view.note(f"{exc}; still trying")
            if now - down_since > UNREACHABLE_GIVE_UP:
                raise
            continue
        down_since = None
        meter.add(time.monotonic(), job)
        if view is not None:
            view.update(job, meter)
    return job


def cmd_jobs(target: Target, *, state: str | None = None, limit: int | None = None, as_json: bool = False) -> int:
    """``boxd jobs``: the newest jobs as a table."""

    async def run(client: ControlClient) -> int:
        jobs = await client.jobs(state, limit)
        _emit({"jobs": jobs}, lambda: jobs_text(jobs), as_json)
        return EXIT_OK

    return _run("jobs", target, run)


def cmd_show(target: Target, job_id: str, *, as_json: bool = False) -> int:
    """``boxd show``: one job with its files."""

    async def run(client: ControlClient) -> int:
        job = await client.job(job_id)
        _emit(job, lambda: job_text(job), as_json)
        return EXIT_OK

    return _run("show", target, run)


def cmd_cancel(target: Target, job_id: str, *, as_json: bool = False) -> int:
    """``boxd cancel``: stop a queued or running job."""

    async def run(client: ControlClient) -> int:
        job = await client.cancel(job_id)
        _emit(job, lambda: f"job {job.get('id')} cancelled", as_json)
        return EXIT_OK

    return _run("cancel", target, run)


def cmd_retry(target: Target, job_id: str, *, as_json: bool = False) -> int:
    """``boxd retry``: queue a failed job's failed files again."""

    async def run(client: ControlClient) -> int:
        job = await client.retry(job_id)
        _emit(job, lambda: f"job {job.get('id')} queued again: its failed files will be retried", as_json)
        return EXIT_OK

    return _run("retry", target, run)


def cmd_status(target: Target, *, as_json: bool = False) -> int:
    """``boxd status``: daemon, auth and queue state."""

    async def run(client: ControlClient) -> int:
        status = await client.status()
        _emit(status, lambda: status_text(status, client.socket), as_json)
        return EXIT_OK

    return _run("status", target, run)
