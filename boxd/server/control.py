"""The control API of DESIGN §3.2: HTTP/1.1 + JSON on the Unix socket.

- **Routes.** ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET|DELETE /v1/jobs/{id}``,
  ``POST /v1/jobs/{id}/retry``, ``GET /v1/status``. ``GET /v1/jobs/{id}`` also takes
  ``files=false`` (the job without its file list: ``boxd enqueue --wait`` polls it twice a
  second, and a first restic backup has thousands of files).
- **Errors.** Every refusal is ``{"error": {"code", "message", "field"}}`` with a 4xx status,
  produced in one middleware: bad JSON, bad fields (:meth:`JobRequest.parse`), sources outside
  ``daemon.allowed_sources`` (:func:`check_source`), unknown query parameters, unknown routes
  (404) and methods (405), bodies over :data:`MAX_BODY` (413), state conflicts (409). A 5xx
  means boxd itself failed (503 when the database is busy, 500 otherwise, logged) and has the
  same shape. Validation happens before anything is written, so bad input never changes jobs.
- **Durability.** ``store.create_job`` commits (fsynced) before the 202 goes out.
- **Socket.** :func:`serve_control` binds ``daemon.socket`` with ``daemon.socket_mode`` (the
  socket appears under its final name only once it has that mode), or takes the socket systemd
  passed (socket activation), and removes the file it created when it stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, Protocol

import anyio
import anyio.to_thread
import structlog
from aiohttp import web
from anyio.abc import TaskStatus

from boxd import systemd
from boxd.errors import ConfigError
from boxd.jobs.models import InvalidTransition, JobRequest, JobState, RequestError, rfc3339
from boxd.jobs.store import JobStore, NotFoundError, StoreBusyError
from boxd.settings import Settings
from boxd.transfer.scan import SourceError, check_source

log = structlog.get_logger("boxd.control")

#: Largest accepted request body; a job request is a few hundred bytes.
MAX_BODY = 64 * 1024
#: ``limit`` of ``GET /v1/jobs``: default and range.
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
#: Longest path a Unix socket address can hold (``sun_path`` is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
#: Seconds in-flight control requests get when the server stops.
SHUTDOWN_TIMEOUT = 5.0

_FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
_SECRET_KEY = re.compile(
    r"(^|_)(token|access_token|refresh_token|secret|password|passphrase|private_key|assertion|authorization)$",
    re.IGNORECASE,
)


class JobControl(Protocol):
    """What the control API asks of the running daemon (the scheduler implements it)."""

    def wake(self) -> None:
        """A job was queued or retried: look for work now."""

    async def cancel(self, job_id: str) -> None:
        """The job was cancelled in the store: stop its running transfers (the scheduler aborts
        their unfinished Box sessions). Returns promptly; a no-op for a job with nothing running."""

    def status(self) -> dict[str, Any]:
        """JSON-ready runtime state for ``GET /v1/status``, never a secret. Keys the CLI renders:
        ``auth`` (``{"state": "ok" | "needs_reauthorization" | ..., "method": ..., "detail": ...}``),
        ``paused`` (bool) and ``pause_reason``, ``transfers`` (list of ``{"job_id", "path",
        "size", "bytes_done"}`` in flight); other keys are shown as they are."""


# --- errors -------------------------------------------------------------------------------


class ApiError(Exception):
    """A refusal with the JSON error body of DESIGN §3.2."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.field, self.headers)


def error_response(
    status: int, code: str, message: str, field: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


def _bad(code: str, message: str, field: str | None = None) -> NoReturn:
    raise ApiError(400, code, message, field)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusals (no route, wrong method, body too large) in the JSON shape."""
    headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    if exc.status == 404:
        message = f"no such route: {request.path}"
    elif exc.status == 405:
        message = f"{request.method} is not allowed on {request.path} (allowed: {exc.headers.get('Allow', '')})"
    elif exc.status == 413:
        message = f"the request body exceeds {MAX_BODY} bytes"
    else:
        message = exc.reason
    return error_response(exc.status, _HTTP_CODES.get(exc.status, "bad_request"), message, None, headers)


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Turn every failure into the JSON error shape; log refusals and internal failures."""
    try:
        return await handler(request)
    except RequestError as exc:  # JobRequest.parse: the body's fields
        log.info("control_request_refused", method=request.method, path=request.path, status=400,
                 code=exc.code, field=exc.field)  # fmt: skip
        return error_response(400, exc.code, exc.message, exc.field)
    except ApiError as exc:
        log.info("control_request_refused", method=request.method, path=request.path, status=exc.status,
                 code=exc.code, field=exc.field)  # fmt: skip
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        log.info("control_request_refused", method=request.method, path=request.path, status=exc.status)
        return _from_http_exception(request, exc)
    except StoreBusyError:
        log.warning("control_store_busy", method=request.method, path=request.path)
        return error_response(503, "busy", "the job database is busy; try again", None, {"Retry-After": "1"})
    except Exception:
        log.exception("control_internal_error", method=request.method, path=request.path)
        return error_response(500, "internal_error", "boxd failed to handle the request; see its log")


# --- request helpers ----------------------------------------------------------------------


def _query(request: web.Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and all known; empty values count as absent."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in known:
            allowed = ", ".join(known) or "none"
            _bad("unknown_field", f"unknown query parameter {name!r}; known: {allowed}", name)
        if len(request.query.getall(name)) > 1:
            _bad("invalid_field", f"query parameter {name!r} given more than once", name)
        if value != "":
            out[name] = value
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ApiError(400, "invalid_json", f"field {key!r} appears more than once", key)
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "body_too_large", f"the request body exceeds {MAX_BODY} bytes")
    raw = await request.read()  # the app's client_max_size refuses longer chunked bodies (413)
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints, deep nesting
        detail = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        _bad("invalid_json", f"the request body is not valid JSON: {detail}")


def _job_id(request: web.Request) -> str:
    return request.match_info["id"]


def _not_found(job_id: str) -> NoReturn:
    raise ApiError(404, "not_found", f"no job {job_id!r}")


def _scrub(value: Any) -> Any:
    """Blank anything that is named like a secret (defence in depth for ``/v1/status``)."""
    if isinstance(value, Mapping):
        return {
            k: "[redacted]" if _SECRET_KEY.search(str(k)) and v is not None else _scrub(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


# --- the application ----------------------------------------------------------------------


def create_control_app(
    store: JobStore, control: JobControl, settings: Settings, *, started_at: float, version: str
) -> web.Application:
    """The control API. ``started_at`` is the daemon's start as ``time.time()``."""
    allowed = list(settings.daemon.allowed_sources)

    async def enqueue(request: web.Request) -> web.Response:
        _query(request, ())
        req = JobRequest.parse(await _json_body(request))
        try:
            await anyio.to_thread.run_sync(check_source, Path(req.source), allowed)
        except SourceError as exc:
            _bad("invalid_source", exc.message, exc.field)
        job, created = await store.create_job(req)
        if created:
            log.info("job_enqueued", job_id=job.id, source=req.source, mode=req.mode.value)
            control.wake()
        else:
            log.info("job_enqueue_repeated", job_id=job.id, idempotency_key=req.idempotency_key)
        headers = {"Location": f"/v1/jobs/{job.id}"}
        return web.json_response(job.to_api(), status=202 if created else 200, headers=headers)

    async def list_jobs(request: web.Request) -> web.Response:
        q = _query(request, ("state", "limit"))
        state = None
        if "state" in q:
            if q["state"] not in {s.value for s in JobState}:
                _bad("invalid_field", f"state must be one of {'|'.join(s.value for s in JobState)}", "state")
            state = JobState(q["state"])
        limit = DEFAULT_LIMIT
        if "limit" in q:
            text = q["limit"]
            if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_LIMIT):
                _bad("invalid_field", f"limit must be an integer in 1..{MAX_LIMIT}", "limit")
            limit = int(text)
        jobs = await store.list_jobs(state, limit)
        return web.json_response({"jobs": [j.to_api() for j in jobs]})

    async def show_job(request: web.Request) -> web.Response:
        q = _query(request, ("files",))
        with_files = q.get("files", "true").lower()
        if with_files not in ("true", "false", "1", "0"):
            _bad("invalid_field", "files must be true or false", "files")
        job_id = _job_id(request)
        job = await store.get_job(job_id)
        if job is None:
            _not_found(job_id)
        files = await store.job_files(job_id) if with_files in ("true", "1") else None
        return web.json_response(job.to_api(files))

    async def cancel_job(request: web.Request) -> web.Response:
        _query(request, ())
        job_id = _job_id(request)
        job = await store.get_job(job_id)
        if job is None:
            _not_found(job_id)
        try:
            job = await store.cancel_job(job_id, time.time())
        except InvalidTransition:
            current = await store.get_job(job_id)
            state = current.state.value if current else "gone"
            raise ApiError(
                409, "invalid_state", f"job {job_id} is {state}; only queued or running jobs can be cancelled"
            ) from None
        except NotFoundError:
            _not_found(job_id)
        log.info("job_cancelled", job_id=job_id)
        try:
            await control.cancel(job_id)
        except Exception:  # the cancel is on disk; workers learn it when they next report
            log.exception("job_cancel_signal_failed", job_id=job_id)
        return web.json_response(job.to_api())

    async def retry_job(request: web.Request) -> web.Response:
        _query(request, ())
        job_id = _job_id(request)
        job = await store.get_job(job_id)
        if job is None:
            _not_found(job_id)
        try:
            job = await store.retry_job(job_id)
        except InvalidTransition:
            current = await store.get_job(job_id)
            state = current.state.value if current else "gone"
            why = f"job {job_id} is {state}; only failed jobs can be retried"
            raise ApiError(409, "invalid_state", why) from None
        except NotFoundError:
            _not_found(job_id)
        log.info("job_retried", job_id=job_id)
        control.wake()
        return web.json_response(job.to_api(), status=202)

    async def status(request: web.Request) -> web.Response:
        _query(request, ())
        counts = await store.counts()
        now = time.time()
        out: dict[str, Any] = {
            "version": version,
            "started_at": rfc3339(started_at),
            "uptime_seconds": round(max(0.0, now - started_at), 3),
            "jobs": counts,
        }
        for key, value in _scrub(control.status()).items():
            out.setdefault(key, value)
        return web.json_response(out)

    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    app.router.add_post("/v1/jobs", enqueue)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{id}", show_job)
    app.router.add_delete("/v1/jobs/{id}", cancel_job)
    app.router.add_post("/v1/jobs/{id}/retry", retry_job)
    app.router.add_get("/v1/status", status)
    return app


# --- the socket ---------------------------------------------------------------------------


def _socket_error(path: Path, what: str) -> ConfigError:
    return ConfigError(f"daemon.socket: {path}: {what}")


def _remove_stale(path: Path) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise _socket_error(path, "exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # a leftover of a process that died: nobody listens
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("control_socket_stale_removed", socket=str(path))
        return
    except FileNotFoundError:
        return
    except TimeoutError:
        raise _socket_error(path, "another process listens on it (is boxd already running?)") from None
    except OSError as exc:
        raise _socket_error(path, f"cannot check the existing socket: {exc.strerror}") from None
    finally:
        probe.close()
    raise _socket_error(path, "another process listens on it (is boxd already running?)")


def bind_unix_socket(path: Path, mode: int) -> tuple[socket.socket, int]:
    """A listening socket at ``path`` with permissions ``mode``, and its inode. Blocking.

    Creates the parent directory if missing and replaces a stale socket file. The socket is
    bound under a temporary name, chmodded, then hard-linked into place, so it never exists at
    ``path`` with looser permissions, and a concurrent start cannot silently take it over."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise _socket_error(path, f"longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _socket_error(path, f"cannot create {path.parent}: {exc.strerror}") from None
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if len(os.fsencode(tmp)) <= MAX_SOCKET_PATH:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            sock.bind(str(tmp))
            try:
                os.chmod(tmp, mode)
                os.link(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:  # no room for a temporary name: bind in place (briefly with the umask's mode)
            sock.bind(str(path))
            os.chmod(path, mode)
        sock.listen(128)
        inode = os.lstat(path).st_ino
    except FileExistsError:
        sock.close()
        raise _socket_error(path, "another process created it while boxd was starting") from None
    except OSError as exc:
        sock.close()
        raise _socket_error(path, f"cannot listen: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock, inode


def remove_socket_file(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still the socket this process created. Blocking."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("control_socket_cleanup_failed", socket=str(path), error=exc.strerror)


def _activated_socket() -> socket.socket | None:
    """The Unix stream socket systemd passed (``boxd.socket``), if any."""
    chosen = None
    for sock in systemd.listen_fds():
        if chosen is None and sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM:
            chosen = sock
        else:
            log.warning("control_socket_activation_extra_fd", fd=sock.fileno())
    return chosen


async def serve_control(
    app: web.Application, settings: Settings, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on the control socket until cancelled; ``task_status.started()`` once it
    accepts connections. Raises :class:`ConfigError` if the socket cannot be set up."""
    path = settings.daemon.socket
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    inode: int | None = None
    try:
        activated = _activated_socket()
        if activated is None:
            sock, inode = await anyio.to_thread.run_sync(bind_unix_socket, path, settings.daemon.socket_mode)
            log.info("control_listening", socket=str(path), mode=f"{settings.daemon.socket_mode:04o}")
        else:
            sock = activated
            log.info("control_listening", socket=str(sock.getsockname()), activated=True)
        site = web.SockSite(runner, sock)
        try:
            await site.start()
        except BaseException:
            sock.close()
            raise
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
            if inode is not None:
                await anyio.to_thread.run_sync(remove_socket_file, path, inode)
            log.info("control_stopped", socket=str(path))
