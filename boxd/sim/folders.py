"""Folder, file-info, trash and ``/users/me`` endpoints of the Box API (``/2.0/...``)."""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from boxd.sim.common import base_url, check_if_match, fields, json_object, query_int, reply, sim, user
from boxd.sim.errors import BoxApiError, missing
from boxd.sim.model import File, Folder, rfc3339
from boxd.sim.streams import send_file
from boxd.sim.views import USER_STANDARD, select

ORDER = [{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}]
MAX_OFFSET = 10_000


def _folder_id(request: web.Request) -> str:
    folder_id = request.match_info["folder_id"]
    if not folder_id.isdigit():
        # Box answers a malformed folder id with 405 (spec paths./folders/{folder_id}.get).
        raise BoxApiError(405, "method_not_allowed", "Method Not Allowed")
    return folder_id


def _sorted(items: list[Folder | File], sort: str | None, direction: str) -> list[Folder | File]:
    keys = {
        "name": lambda i: i.name.lower(),
        "id": lambda i: int(i.id),
        "date": lambda i: i.created_at,
        "size": lambda i: i.current.size if isinstance(i, File) else 0,
    }
    if sort is None:
        return items if direction == "ASC" else items[::-1]
    if sort not in keys:
        raise BoxApiError(400, "bad_request", f"Invalid sort field '{sort}'")
    folders = sorted((i for i in items if isinstance(i, Folder)), key=keys[sort], reverse=direction == "DESC")
    files = sorted((i for i in items if isinstance(i, File)), key=keys[sort], reverse=direction == "DESC")
    return [*folders, *files]


def items_page(request: web.Request, folder: Folder, default_limit: int = 100) -> dict[str, Any]:
    """One page of a folder's items (``Items``), in offset or marker mode."""
    state = sim(request)
    direction = request.query.get("direction", "ASC").upper()
    if direction not in ("ASC", "DESC"):
        raise BoxApiError(400, "bad_request", f"Invalid direction '{direction}'")
    items = _sorted(state.account.items(folder), request.query.get("sort"), direction)
    # Box clamps a larger limit to its maximum (``Items.limit`` in the spec) rather than failing.
    limit = min(query_int(request, "limit", default_limit, low=1, high=2**31, code="invalid_limit"), 1000)
    fs = fields(request)
    if request.query.get("usemarker", "").lower() == "true":
        marker = request.query.get("marker")
        start = 0
        if marker:
            try:
                start = int(base64.urlsafe_b64decode(marker.encode()).decode().removeprefix("i:"))
            except ValueError:
                raise BoxApiError(400, "bad_request", "Invalid marker") from None
        page = items[start : start + limit]
        end = start + len(page)
        next_marker = base64.urlsafe_b64encode(f"i:{end}".encode()).decode() if end < len(items) else None
        return {"entries": [state.views.item(i, fs) for i in page], "limit": limit, "next_marker": next_marker}
    offset = query_int(request, "offset", 0, low=0, high=MAX_OFFSET, code="invalid_offset")
    page = items[offset : offset + limit]
    return {
        "total_count": len(items),
        "entries": [state.views.item(i, fs) for i in page],
        "offset": offset,
        "limit": limit,
        "order": ORDER,
    }


async def get_folder(request: web.Request) -> web.Response:
    state = sim(request)
    folder = state.account.folder(user(request), _folder_id(request))
    body = state.views.folder(folder, fields=fields(request))
    if fields(request) is None or "item_collection" in (fields(request) or ()):
        body["item_collection"] = items_page(request, folder)
    return reply(body)


async def list_items(request: web.Request) -> web.Response:
    state = sim(request)
    folder = state.account.folder(user(request), _folder_id(request))
    return reply(items_page(request, folder))


async def create_folder(request: web.Request) -> web.Response:
    state = sim(request)
    body = await json_object(request)
    if "name" not in body:
        raise missing("name")
    parent = body.get("parent")
    if not isinstance(parent, dict) or not isinstance(parent.get("id"), str):
        raise missing("parent")
    parent_folder = state.account.folder(user(request), parent["id"], param="parent")
    folder = state.account.create_folder(user(request), parent_folder, body["name"])
    return reply(state.views.folder(folder, fields=fields(request)), status=201)


async def get_file(request: web.Request) -> web.Response:
    state = sim(request)
    f = state.account.file(user(request), request.match_info["file_id"])
    return reply(state.views.file(f, fields=fields(request)))


async def delete_file(request: web.Request) -> web.Response:
    """Move a file to the trash (``DELETE /files/{id}``), honouring ``If-Match``."""
    state = sim(request)
    f = state.account.file(user(request), request.match_info["file_id"])
    check_if_match(request, f)
    state.account.trash_file(f)
    return web.Response(status=204)


async def download(request: web.Request) -> web.StreamResponse:
    state = sim(request)
    f = state.account.file(user(request), request.match_info["file_id"])
    version = f.current
    if (vid := request.query.get("version")) is not None:
        matches = [v for v in f.versions if v.id == vid]
        if not matches:
            raise BoxApiError(404, "not_found", "Not Found")
        version = matches[0]
    return await send_file(request, version.blob, version.size, state.knobs.bandwidth)


async def users_me(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    created = state.account.folders[state.account.roots[u.id]].created_at

    getters = {
        "type": lambda: "user",
        "id": lambda: u.id,
        "name": lambda: u.name,
        "login": lambda: u.login,
        "created_at": lambda: rfc3339(created),
        "modified_at": lambda: rfc3339(created),
        "language": lambda: "en",
        "timezone": lambda: "UTC",
        "space_amount": lambda: state.knobs.space_amount,
        "space_used": lambda: state.account.space_used(u.id),
        "max_upload_size": lambda: state.knobs.max_upload_size,
        "status": lambda: "active",
        "job_title": lambda: "",
        "phone": lambda: "",
        "address": lambda: "",
        "avatar_url": lambda: f"{base_url(request)}/api/avatar/large/{u.id}",
        "notification_email": lambda: None,
        "role": lambda: "admin" if u.can_impersonate and not u.is_service_account else "user",
        "enterprise": lambda: {"type": "enterprise", "id": u.enterprise_id, "name": "boxd sim enterprise"},
    }
    return reply(select(getters, USER_STANDARD, fields(request), base=("type", "id")))
