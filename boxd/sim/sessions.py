"""Chunked upload sessions (``box-api-contract.md`` §5).

Parts are written to ``DATA/sessions/<id>/`` as they arrive and joined into the file's blob
on commit, so memory stays flat whatever the file size. Every rule Box applies is here: the
20,000,000-byte minimum, the part grid of ``Content-Range``, the ``Digest`` of each part and
of the whole file, immutable parts (416 on overlap), ``parts_mismatch``, 202 + ``Retry-After``
commits, abort and the 7-day expiry.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import shutil
from typing import Any

import anyio
from aiohttp import web

from boxd.sim.common import base_url, check_if_match, fields, json_object, query_int, reply, sim, user
from boxd.sim.config import SESSION_MIN_SIZE
from boxd.sim.errors import BoxApiError, missing
from boxd.sim.files import check_quota, parse_time
from boxd.sim.model import Part, Session, Version, check_name, rfc3339
from boxd.sim.state import SimState
from boxd.sim.streams import concatenate, receive

_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def session_json(request: web.Request, s: Session) -> dict[str, Any]:
    """``components.schemas.UploadSession`` with absolute endpoints pointing at this emulator."""
    url = f"{base_url(request)}/api/2.0/files/upload_sessions/{s.id}"
    return {
        "id": s.id,
        "type": "upload_session",
        "session_expires_at": rfc3339(s.expires_at),
        "part_size": s.part_size,
        "total_parts": s.total_parts,
        "num_parts_processed": len(s.parts),
        "session_endpoints": {
            "upload_part": url,
            "commit": f"{url}/commit",
            "abort": url,
            "list_parts": f"{url}/parts",
            "status": url,
            "log_event": f"{url}/log",
        },
    }


def _file_size(body: dict[str, Any]) -> int:
    if "file_size" not in body:
        raise BoxApiError(400, "missing_file_size", "Missing file_size")
    size = body["file_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BoxApiError(400, "invalid_file_size", "Invalid file_size")
    if size < SESSION_MIN_SIZE:
        raise BoxApiError(
            400,
            "file_size_too_small",
            f"File size {size} is less than minimum allowed for this API: {SESSION_MIN_SIZE}",
        )
    return size


def _open_session(
    state: SimState, request: web.Request, folder_id: str, file_id: str | None, name: str, size: int
) -> web.Response:
    now = state.clock()
    sid = state.account.new_session_id()
    s = Session(
        id=sid,
        owner_id=user(request).id,
        folder_id=folder_id,
        file_id=file_id,
        file_name=name,
        file_size=size,
        part_size=state.knobs.part_size_for(size),
        created_at=now,
        expires_at=now + state.knobs.session_ttl,
        directory=state.session_dir / sid,
    )
    s.directory.mkdir(parents=True, exist_ok=True)
    state.account.sessions[sid] = s
    return reply(session_json(request, s), status=201)


async def create_session(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    body = await json_object(request)
    if "folder_id" not in body:
        raise BoxApiError(400, "missing_destination", "Missing folder_id")
    if not isinstance(body["folder_id"], str) or not body["folder_id"].isdigit():
        raise BoxApiError(400, "invalid_folder_id", "Invalid folder_id")
    size = _file_size(body)
    if "file_name" not in body:
        raise BoxApiError(400, "missing_file_name", "Missing file_name")
    name = check_name(body["file_name"], "file_name")
    folder = state.account.folder(u, body["folder_id"], param="folder_id", code="invalid_parameter")
    check_quota(state, u, size)
    state.account.check_free(folder, name)
    return _open_session(state, request, folder.id, None, name, size)


async def create_version_session(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    f = state.account.file(u, request.match_info["file_id"])
    body = await json_object(request)
    size = _file_size(body)
    name = check_name(body["file_name"], "file_name") if body.get("file_name") is not None else f.name
    check_quota(state, u, size)
    return _open_session(state, request, f.parent_id, f.id, name, size)


def _session(request: web.Request) -> Session:
    state = sim(request)
    s = state.account.sessions.get(request.match_info["session_id"])
    if s is None or s.state in ("aborted", "committed"):
        raise BoxApiError(404, "not_found", "Upload session not found")
    if s.owner_id != user(request).id:
        raise BoxApiError(403, "forbidden", "Upload session belongs to another user")
    if s.state == "open" and state.clock() >= s.expires_at:
        s.state = "expired"
        shutil.rmtree(s.directory, ignore_errors=True)
    if s.state == "expired":
        raise BoxApiError(410, "session_expired", "The upload session has expired")
    return s


def _digest(request: web.Request) -> str:
    """The SHA-1 (hex) of a ``Digest: sha=<base64>`` header; the algorithm token is case-insensitive."""
    header = request.headers.get("Digest")
    if header is None:
        raise missing("digest")
    algo, _, value = header.partition("=")
    if algo.strip().lower() != "sha" or not value:
        raise BoxApiError(400, "bad_request", "Digest header must be 'sha=<base64 SHA-1>'")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        raise BoxApiError(400, "bad_request", "Digest header is not valid base64") from None
    if len(raw) != 20:
        raise BoxApiError(400, "bad_request", "Digest header must carry a 20-byte SHA-1")
    return raw.hex()


def _range_error(message: str, context: dict[str, Any] | None = None) -> BoxApiError:
    return BoxApiError(416, "requested_range_not_satisfiable", message, context_info=context)


def _overlap(stored: Part) -> BoxApiError:
    return BoxApiError(
        416,
        "range_overlaps_existing_part",
        "Part range overlaps an existing part",
        context_info={"conflicting_part": stored.as_json()},
    )


async def upload_part(request: web.Request) -> web.Response:
    state = sim(request)
    s = _session(request)
    sha1 = _digest(request)
    match = _RANGE.match(request.headers.get("Content-Range", "").strip())
    if match is None:
        raise BoxApiError(400, "bad_request", "Content-Range must be 'bytes <first>-<last>/<total>'")
    first, last, total = (int(g) for g in match.groups())
    if total != s.file_size:
        raise _range_error(f"Content-Range total {total} does not match the session's file size {s.file_size}")
    if first % s.part_size or first >= s.file_size or last - first + 1 != s.expected_length(first):
        raise _range_error(
            f"Range {first}-{last} does not fit the session's part grid "
            f"(part_size {s.part_size}, file_size {s.file_size})"
        )
    if first in s.parts:
        raise _overlap(s.parts[first])
    length = last - first + 1
    dest = s.directory / f"{first:020d}.{secrets.token_hex(4)}.tmp"

    def counted(n: int) -> None:
        state.stats.bytes_received += n

    if state.knobs.drop_mid_part and state.rng.random() < state.knobs.drop_mid_part:
        await receive(request.content.read, dest, limit=length // 2, bandwidth=state.knobs.bandwidth, on_bytes=counted)
        dest.unlink(missing_ok=True)
        raise DroppedConnection
    size, got = await receive(
        request.content.read, dest, limit=length + 1, bandwidth=state.knobs.bandwidth, on_bytes=counted
    )
    try:
        if size != length:
            raise BoxApiError(400, "bad_request", f"Body has {size} bytes but Content-Range announces {length}")
        if got != sha1:
            raise BoxApiError(412, "precondition_failed", "The part's digest does not match the Digest header")
        if first in s.parts:  # a concurrent upload of the same range won
            raise _overlap(s.parts[first])
        if s.state != "open":
            raise BoxApiError(404, "not_found", "Upload session not found")
    except BoxApiError:
        dest.unlink(missing_ok=True)
        raise
    await anyio.to_thread.run_sync(dest.rename, s.directory / f"{first:020d}.part")
    part = Part(part_id=secrets.token_hex(4).upper(), offset=first, size=size, sha1=got)
    s.parts[first] = part
    return reply({"part": part.as_json()})


class DroppedConnection(Exception):
    """The ``drop_mid_part`` fault: the middleware closes the connection without an answer."""


async def session_status(request: web.Request) -> web.Response:
    return reply(session_json(request, _session(request)))


async def list_parts(request: web.Request) -> web.Response:
    s = _session(request)
    offset = query_int(request, "offset", 0, low=0, high=10_000, code="invalid_offset")
    limit = min(query_int(request, "limit", 100, low=1, high=2**31, code="invalid_limit"), 1000)
    parts = [p for _, p in sorted(s.parts.items())]
    return reply(
        {
            "total_count": len(parts),
            "limit": limit,
            "offset": offset,
            "order": [{"by": "offset", "direction": "ASC"}],
            "entries": [p.as_json() for p in parts[offset : offset + limit]],
        }
    )


async def abort(request: web.Request) -> web.Response:
    s = _session(request)
    s.state = "aborted"
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(s.directory, ignore_errors=True))
    return web.Response(status=204)


def _check_parts(s: Session, listed: object) -> None:
    """The commit's part list must name exactly the parts uploaded; else ``parts_mismatch``."""
    if not isinstance(listed, list) or not listed:
        raise missing("parts")
    seen: set[int] = set()
    for item in listed:
        if not isinstance(item, dict):
            raise BoxApiError(400, "bad_request", "Each part must be an object")
        stored = s.parts.get(item.get("offset"))  # type: ignore[arg-type]
        if (
            stored is None
            or item.get("part_id") != stored.part_id
            or item.get("size") != stored.size
            or (item.get("sha1") is not None and item.get("sha1") != stored.sha1)
        ):
            shown = {k: item.get(k) for k in ("part_id", "offset", "size", "sha1")}
            raise BoxApiError(400, "parts_mismatch", f"No matching part found on server for {shown}")
        seen.add(stored.offset)
    if len(seen) != s.total_parts:
        raise BoxApiError(400, "parts_mismatch", f"Commit lists {len(seen)} parts but the file needs {s.total_parts}")


async def commit(request: web.Request) -> web.Response:
    state = sim(request)
    u = user(request)
    s = _session(request)
    whole_sha1 = _digest(request)
    body = await json_object(request)
    if s.committing or s.commits_seen < state.knobs.commit_202:
        # Box: "parts uploaded but not yet processed"; the client retries the same commit.
        s.commits_seen += 1
        return web.Response(status=202, headers={"Retry-After": "1"})
    _check_parts(s, body.get("parts"))
    if s.mismatches_sent < state.knobs.commit_mismatch:
        s.mismatches_sent += 1
        first = s.parts[min(s.parts)]
        raise BoxApiError(400, "parts_mismatch", f"No matching part found on server for {first.as_json()}")
    attrs = body.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise BoxApiError(400, "bad_request", "'attributes' must be an object")
    target = state.account.files.get(s.file_id) if s.file_id else None
    if target is not None:
        check_if_match(request, target)
    vid = state.account.new_version_id()
    state.blobs.mkdir(parents=True, exist_ok=True)
    blob = state.blobs / vid
    s.committing = True
    try:
        actual = await concatenate([s.directory / f"{off:020d}.part" for off in sorted(s.parts)], blob)
    finally:
        s.committing = False
    try:
        if actual != whole_sha1:
            b64 = base64.b64encode
            raise BoxApiError(
                400,
                "digest_mismatch",
                f"File digest was incorrect. Actual: "
                f"{b64(bytes.fromhex(actual)).decode()} Expected: "
                f"{b64(bytes.fromhex(whole_sha1)).decode()}",
            )
        check_quota(state, u, s.file_size)
        now = state.clock()
        version = Version(
            id=vid,
            sha1=actual,
            size=s.file_size,
            blob=blob,
            created_at=now,
            content_created_at=parse_time(attrs, "content_created_at", now),
            content_modified_at=parse_time(attrs, "content_modified_at", now),
        )
        if target is not None:
            state.account.add_version(target, version, s.file_name)
            f = target
        else:
            folder = state.account.folders[s.folder_id]
            f = state.account.add_file(u, folder, s.file_name, version)
    except BoxApiError:
        blob.unlink(missing_ok=True)
        raise
    s.state = "committed"
    await anyio.to_thread.run_sync(lambda: shutil.rmtree(s.directory, ignore_errors=True))
    return reply({"total_count": 1, "entries": [state.views.file(f, fields=fields(request))]}, status=201)
