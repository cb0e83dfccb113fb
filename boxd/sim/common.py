"""Small helpers shared by the emulator's handlers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from boxd.sim.errors import BoxApiError, param_error
from boxd.sim.model import File, User
from boxd.sim.state import STATE, SimState
from boxd.sim.views import parse_fields

USER = web.RequestKey("boxd_sim_user", User)


def sim(request: web.Request) -> SimState:
    return request.app[STATE]


def user(request: web.Request) -> User:
    """The user a request acts as (``As-User`` applied); set by the auth middleware."""
    return request[USER]


def fields(request: web.Request) -> tuple[str, ...] | None:
    return parse_fields(request.query.get("fields"))


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; Box's 400 ``bad_request`` otherwise."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BoxApiError(400, "bad_request", "Could not parse JSON body") from None
    if not isinstance(body, dict):
        raise BoxApiError(400, "bad_request", "Request body must be a JSON object")
    return body


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int, code: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise param_error(
            400, code, "invalid_parameter", name, f"Invalid value '{raw}'. '{name}' must be an integer"
        ) from None
    if not low <= value <= high:
        raise param_error(
            400, code, "invalid_parameter", name, f"Invalid value '{raw}'. '{name}' must be between {low} and {high}"
        )
    return value


def check_if_match(request: web.Request, f: File) -> None:
    """412 ``precondition_failed`` when an ``If-Match`` etag no longer names ``f``'s version."""
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match != str(f.etag):
        raise BoxApiError(412, "precondition_failed")


def base_url(request: web.Request) -> str:
    """The emulator's own externally visible base URL, as the client addressed it."""
    return f"{request.scheme}://{request.host}"
