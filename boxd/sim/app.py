"""The emulator's aiohttp application: Box's routes and the checks every request passes.

One middleware runs Box's request pipeline in order: latency knob, bearer token (401),
``As-User``, injected faults (429/5xx), per-user rate limits (429 + ``Retry-After``), the
handler; and it turns every error into Box's JSON shape, so a client never sees a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from aiohttp import web

from boxd.sim import admin, files, folders, oauth, sessions
from boxd.sim.auth import Unauthorized
from boxd.sim.common import USER
from boxd.sim.errors import BoxApiError
from boxd.sim.state import STATE, SimState

log = logging.getLogger("boxd.sim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Requests Box counts against the uploads-per-minute limit (on top of the API-call limit).
UPLOAD_ROUTES = {
    "POST /api/2.0/files/content",
    "POST /api/2.0/files/{file_id}/content",
    "POST /api/2.0/files/upload_sessions",
    "POST /api/2.0/files/{file_id}/upload_sessions",
}
_5XX = [(500, "internal_server_error"), (502, "bad_gateway"), (503, "unavailable")]


def route_key(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource is not None else '<unmatched>'}"


def _is_box_api(path: str) -> bool:
    return path.startswith(("/2.0/", "/api/2.0/"))


async def _drain(request: web.Request) -> None:
    """Read what is left of a refused request's body so the client can read our answer."""
    if request.body_exists:
        while await request.content.read(1 << 20):
            pass


def _authenticate(state: SimState, request: web.Request) -> None:
    user_id = state.authority.user_for(request.headers.get("Authorization"))
    caller = state.account.users[user_id]
    as_user = request.headers.get("As-User")
    if as_user is None:
        request[USER] = caller
        return
    target = state.account.users.get(as_user.strip())
    if (
        not caller.can_impersonate
        or target is None
        or target.is_service_account
        or target.enterprise_id != caller.enterprise_id
    ):
        raise BoxApiError(
            403, "access_denied_insufficient_permissions", "The As-User header names a user this app may not act as"
        )
    request[USER] = target


def _check_limits(state: SimState, request: web.Request, key: str) -> None:
    knobs = state.knobs
    if knobs.rate_429 and state.rng.random() < knobs.rate_429:
        raise BoxApiError(429, "rate_limit_exceeded", headers={"Retry-After": str(knobs.retry_after)})
    if knobs.rate_5xx and state.rng.random() < knobs.rate_5xx:
        status, code = state.rng.choice(_5XX)
        raise BoxApiError(status, code)
    user_id = request[USER].id
    now = state.clock()
    checks = [("api", knobs.api_calls_per_minute)]
    if key in UPLOAD_ROUTES:
        checks.append(("upload", knobs.uploads_per_minute))
    for kind, limit in checks:
        wait = state.limiter.check(user_id, kind, limit, knobs.rate_window, knobs.rate_burst, now)
        if wait:
            raise BoxApiError(429, "rate_limit_exceeded", headers={"Retry-After": str(wait)})


@web.middleware
async def box_pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE]
    key = route_key(request)
    request_id = state.request_id()
    started = time.time()  # wall clock, comparable across processes
    status = 500
    try:
        if state.knobs.latency_ms:
            await anyio.sleep(state.knobs.latency_ms / 1000)
        if _is_box_api(request.path) and key != "<unmatched>":
            _authenticate(state, request)
            _check_limits(state, request, key)
        response = await handler(request)
        status = response.status
    except sessions.DroppedConnection:
        # The fault wants the client to see a connection reset mid-body, not an answer.
        status = 0
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)
    except web.HTTPException as exc:  # unknown route or method: answer in Box's shape
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        response = _box_error(BoxApiError(exc.status, code), request_id)
        status = response.status
    except Unauthorized as exc:
        state.stats.unauthorized += 1
        await _drain(request)
        response = _box_error(
            BoxApiError(401, "unauthorized", "Unauthorized", headers={"WWW-Authenticate": exc.www_authenticate()}),
            request_id,
        )
        status = 401
    except BoxApiError as exc:
        if exc.status == 429:
            state.stats.rate_limited += 1
        await _drain(request)
        response = _box_error(exc, request_id)
        status = exc.status
    except Exception:
        log.exception("unexpected error on %s", key)
        response = _box_error(BoxApiError(500, "internal_server_error"), request_id)
    finally:
        state.stats.requests[key][str(status)] += 1
        if not request.path.startswith("/_sim/"):
            user = request.get(USER)
            state.stats.log.append(
                {"t": started, "route": key, "status": status, "user": user.id if user is not None else None}
            )
    response.headers["box-request-id"] = request_id
    return response


def _box_error(exc: BoxApiError, request_id: str) -> web.Response:
    return web.json_response(exc.body(request_id), status=exc.status, headers=exc.headers)


def create_app(state: SimState) -> web.Application:
    """The emulator as an aiohttp app; ``state`` is shared with the caller (tests may inspect it)."""
    app = web.Application(middlewares=[box_pipeline], client_max_size=8 * 1024 * 1024)
    app[STATE] = state
    r = app.router
    r.add_get("/2.0/users/me", folders.users_me)
    r.add_post("/2.0/folders", folders.create_folder)
    r.add_get("/2.0/folders/{folder_id}", folders.get_folder)
    r.add_get("/2.0/folders/{folder_id}/items", folders.list_items)
    r.add_get("/2.0/files/{file_id}", folders.get_file)
    r.add_delete("/2.0/files/{file_id}", folders.delete_file)
    r.add_get("/2.0/files/{file_id}/content", folders.download)
    r.add_route("OPTIONS", "/2.0/files/content", files.preflight)
    r.add_route("OPTIONS", "/2.0/files/content/", files.preflight)
    r.add_post("/api/2.0/files/content", files.upload_file)
    r.add_post("/api/2.0/files/{file_id}/content", files.upload_version)
    r.add_post("/api/2.0/files/upload_sessions", sessions.create_session)
    r.add_post("/api/2.0/files/{file_id}/upload_sessions", sessions.create_version_session)
    r.add_put("/api/2.0/files/upload_sessions/{session_id}", sessions.upload_part)
    r.add_get("/api/2.0/files/upload_sessions/{session_id}", sessions.session_status)
    r.add_delete("/api/2.0/files/upload_sessions/{session_id}", sessions.abort)
    r.add_get("/api/2.0/files/upload_sessions/{session_id}/parts", sessions.list_parts)
    r.add_post("/api/2.0/files/upload_sessions/{session_id}/commit", sessions.commit)
    r.add_post("/oauth2/token", oauth.token)
    r.add_post("/api/oauth2/token", oauth.token)
    admin.add_routes(app)
    return app
