"""Simple uploads, new versions and the upload preflight (``box-api-contract.md`` §4).

``POST /api/2.0/files/content`` and ``/files/{id}/content`` take ``multipart/form-data`` whose
``attributes`` part must come before the ``file`` part. The file is streamed to disk while it
is hashed; only then are size, quota, digest and name checked, so a client always gets its
answer after it finished sending (as from Box) and a refused upload leaves nothing behind.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

from aiohttp import BodyPartReader, web

from boxd.sim.common import base_url, check_if_match, fields, json_object, reply, sim, user
from boxd.sim.errors import BoxApiError, invalid, missing
from boxd.sim.model import Folder, User, Version, check_name
from boxd.sim.state import SimState
from boxd.sim.streams import receive


def parse_time(attrs: dict[str, Any], key: str, default: float) -> float:
    raw = attrs.get(key)
    if raw is None:
        return default
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise invalid(key, raw) from None


def check_quota(state: SimState, owner: User, size: int, replacing: int = 0) -> None:
    """403 when ``size`` exceeds ``max_upload_size`` or the space left (Box's upload checks)."""
    if size > state.knobs.max_upload_size:
        raise BoxApiError(
            403, "file_size_limit_exceeded", context_info={"max_upload_size": state.knobs.max_upload_size}
        )
    if state.account.space_used(owner.id) + size > state.knobs.space_amount:
        raise BoxApiError(403, "storage_limit_exceeded")


def check_sha1_header(request: web.Request, sha1: str) -> None:
    expected = request.headers.get("Content-MD5")
    if expected is not None and expected.strip().lower() != sha1:
        raise BoxApiError(400, "bad_digest", "The specified content-md5 did not match what we received")


async def _multipart(request: web.Request) -> tuple[dict[str, Any], BodyPartReader]:
    """The ``attributes`` JSON and the reader positioned on the ``file`` part."""
    try:
        return await _parse_multipart(request)
    except ValueError as exc:  # aiohttp's multipart reader reports malformed framing as ValueError
        raise BoxApiError(400, "bad_request", f"Malformed multipart body: {exc}") from None


async def _parse_multipart(request: web.Request) -> tuple[dict[str, Any], BodyPartReader]:
    if not request.content_type.startswith("multipart/"):
        raise BoxApiError(400, "bad_request", "Expected multipart/form-data with 'attributes' and 'file'")
    reader = await request.multipart()
    part = await reader.next()
    if not isinstance(part, BodyPartReader):
        raise missing("attributes")
    if part.name != "attributes":
        # Box takes the file under any part name (rclone sends "contents", the SDKs "file"),
        # but only after the attributes.
        if part.filename is not None or part.name in ("file", "contents"):
            raise BoxApiError(
                400, "metadata_after_file_contents", "Metadata (attributes) must be sent before the file contents"
            )
        raise missing("attributes")
    try:
        attrs = json.loads(await part.text())
    except json.JSONDecodeError:
        raise invalid("attributes", "not JSON") from None
    if not isinstance(attrs, dict):
        raise invalid("attributes", "not an object")
    file_part = await reader.next()
    if not isinstance(file_part, BodyPartReader):
        raise missing("file")
    return attrs, file_part


async def _receive_version(request: web.Request, file_part: BodyPartReader, attrs: dict[str, Any]) -> Version:
    state = sim(request)
    vid = state.account.new_version_id()
    state.blobs.mkdir(parents=True, exist_ok=True)
    blob = state.blobs / vid

    def counted(n: int) -> None:
        state.stats.bytes_received += n

    try:
        size, sha1 = await receive(file_part.read_chunk, blob, bandwidth=state.knobs.bandwidth, on_bytes=counted)
    except ValueError as exc:
        raise BoxApiError(400, "bad_request", f"Malformed multipart body: {exc}") from None
    now = state.clock()
    return Version(
        id=vid,
        sha1=sha1,
        size=size,
        blob=blob,
        created_at=now,
        content_created_at=parse_time(attrs, "content_created_at", now),
        content_modified_at=parse_time(attrs, "content_modified_at", now),
    )


async def upload_file(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    attrs, file_part = await _multipart(request)
    name = check_name(attrs.get("name"))
    parent = attrs.get("parent")
    if not isinstance(parent, dict) or not isinstance(parent.get("id"), str):
        raise missing("parent")
    folder = state.account.folder(u, parent["id"], param="parent")
    version = await _receive_version(request, file_part, attrs)
    try:
        check_quota(state, u, version.size)
        check_sha1_header(request, version.sha1)
        f = state.account.add_file(u, folder, name, version)
    except BoxApiError:
        version.blob.unlink(missing_ok=True)
        raise
    return reply({"total_count": 1, "entries": [state.views.file(f, fields=fields(request))]}, status=201)


async def upload_version(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    f = state.account.file(u, request.match_info["file_id"])
    check_if_match(request, f)
    attrs, file_part = await _multipart(request)
    new_name = attrs.get("name")
    if new_name is not None:
        check_name(new_name)
    version = await _receive_version(request, file_part, attrs)
    try:
        check_quota(state, u, version.size)
        check_sha1_header(request, version.sha1)
        state.account.add_version(f, version, new_name)
    except BoxApiError:
        version.blob.unlink(missing_ok=True)
        raise
    return reply({"total_count": 1, "entries": [state.views.file(f, fields=fields(request))]})


def preflight_checks(state: SimState, u: User, folder: Folder, name: object, size: object) -> str:
    """Everything an upload of ``name``/``size`` into ``folder`` would be refused for."""
    checked = check_name(name)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise invalid("size", size)
        check_quota(state, u, size)
    state.account.check_free(folder, checked)
    return checked


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS /files/content``: 200 with an upload URL, or the error the upload would get."""
    state = sim(request)
    u = user(request)
    body = await json_object(request)
    parent = body.get("parent")
    if not isinstance(parent, dict) or not isinstance(parent.get("id"), str):
        raise missing("parent")
    folder = state.account.folder(u, parent["id"], param="parent")
    preflight_checks(state, u, folder, body.get("name"), body.get("size"))
    return reply(
        {"upload_url": f"{base_url(request)}/api/2.0/files/content", "upload_token": secrets.token_urlsafe(32)}
    )
