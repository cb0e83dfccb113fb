"""The emulator's own admin API (``/_sim/...``): state, stats, faults and tokens.

Not Box paths and never authenticated: tests and benchmarks use it to look inside and to
inject faults (DESIGN §3.5).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from aiohttp import web

from boxd.sim.common import sim
from boxd.sim.model import File, Folder
from boxd.sim.state import SimState


def _path(state: SimState, parent_id: str, name: str) -> str:
    parts = [f.name for f in state.account.path_of(state.account.folders[parent_id])[1:]]
    parent = state.account.folders[parent_id]
    if not parent.is_root:
        parts.append(parent.name)
    return "/".join([*parts, name])


def _file_row(state: SimState, f: File) -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        "path": _path(state, f.parent_id, f.name),
        "size": f.current.size,
        "sha1": f.current.sha1,
        "versions": len(f.versions),
        "parent_id": state.account.public_id(state.account.folders[f.parent_id]),
    }


def snapshot(state: SimState, user_id: str) -> dict[str, Any]:
    """Everything one user owns, with paths relative to their root folder."""
    acc = state.account
    folders: list[Folder] = [d for d in acc.folders.values() if d.owner_id == user_id and not d.is_root]
    files = [f for f in acc.files.values() if f.owner_id == user_id]
    return {
        "folders": [
            {
                "id": d.id,
                "name": d.name,
                "path": _path(state, d.parent_id or "", d.name),
                "parent_id": acc.public_id(acc.folders[d.parent_id or ""]),
            }
            for d in folders
        ],
        "files": [_file_row(state, f) for f in files if f.trashed_at is None],
        "trash": [_file_row(state, f) for f in files if f.trashed_at is not None],
        "sessions": [
            {
                "id": s.id,
                "file_name": s.file_name,
                "folder_id": acc.public_id(acc.folders[s.folder_id]),
                "file_size": s.file_size,
                "part_size": s.part_size,
                "total_parts": s.total_parts,
                "parts_uploaded": len(s.parts),
                "state": "expired" if s.state == "open" and state.clock() >= s.expires_at else s.state,
            }
            for s in acc.sessions.values()
            if s.owner_id == user_id
        ],
    }


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


async def get_state(request: web.Request) -> web.Response:
    state = sim(request)
    user_id = request.query.get("user_id", state.user.id)
    if user_id not in state.account.users:
        return _error(f"unknown user_id {user_id!r}", 404)
    return web.json_response(snapshot(state, user_id))


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(sim(request).stats.as_json())


async def get_log(request: web.Request) -> web.Response:
    """The latest Box requests (not admin ones): ``t`` (epoch seconds at arrival), route, status, user."""
    return web.json_response({"requests": list(sim(request).stats.log)})


async def get_faults(request: web.Request) -> web.Response:
    return web.json_response(dataclasses.asdict(sim(request).knobs))


async def set_faults(request: web.Request) -> web.Response:
    state = sim(request)
    try:
        changes = json.loads(await request.read() or b"{}")
        if not isinstance(changes, dict):
            raise ValueError("body must be a JSON object of knob names to numbers")
        state.knobs = state.knobs.updated(changes)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return _error(str(exc))
    return await get_faults(request)


async def reset_faults(request: web.Request) -> web.Response:
    state = sim(request)
    state.knobs = state.startup
    state.limiter.reset()
    return await get_faults(request)


async def new_tokens(request: web.Request) -> web.Response:
    state = sim(request)
    issued = state.authority.issue(state.user.id, with_refresh=True)
    return web.json_response(state.authority.rclone_blob(issued))


async def revoke(request: web.Request) -> web.Response:
    sim(request).authority.revoke_all()
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/_sim/state", get_state)
    app.router.add_get("/_sim/stats", get_stats)
    app.router.add_get("/_sim/log", get_log)
    app.router.add_get("/_sim/faults", get_faults)
    app.router.add_post("/_sim/faults", set_faults)
    app.router.add_delete("/_sim/faults", reset_faults)
    app.router.add_post("/_sim/tokens", new_tokens)
    app.router.add_post("/_sim/revoke", revoke)
