"""The thin I/O layer over Box's HTTP API: every request paced, authorised, retried and counted.

:meth:`BoxClient.request` is the one place where boxd talks to Box. For each attempt it waits
for the :class:`~boxd.box.pacing.Pacer`, takes a token from the
:class:`~boxd.box.auth.TokenProvider`, sends, reports to :class:`~boxd.accounting.Stats`, and
lets :func:`~boxd.box.retry.classify` decide: hand the answer back, refresh the token once
(401), retry with backoff (429 pauses *every* caller through the pacer), or raise the matching
:mod:`boxd.errors` exception. ``aiohttp`` exceptions never leave this module.

The endpoint methods below parse answers into :mod:`boxd.box.models` types and know nothing
about jobs, folders paths or sessions' state: that is :mod:`~boxd.box.folders` and
:mod:`~boxd.box.uploader`.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio

from boxd.accounting import Stats
from boxd.box.auth import TokenProvider, auth_headers
from boxd.box.models import Item, SessionInfo, UploadedPart, User, parse_entries
from boxd.box.pacing import Kind, Pacer
from boxd.box.retry import Backoff, Fatal, Proceed, RefreshAuth, Retry, classify, parse_retry_after, to_error
from boxd.errors import ProtocolError, TransientError
from boxd.settings import BoxSettings

#: Fields asked for in listings: what comparing by name, size and SHA-1 needs (rclone asks the same).
LIST_FIELDS = "type,id,sequence_id,etag,sha1,name,size,owned_by,item_status"

#: 429 answers one request may get before it gives up (each one pauses every request first).
MAX_RATE_LIMITED = 30

Body = Callable[[], Any]  # builds a fresh request body for each attempt (bytes, BytesIO, FormData)


@dataclass(frozen=True)
class Answer:
    """A non-error answer of Box (2xx/3xx): status, headers and the decoded JSON body, if any."""

    status: int
    headers: Mapping[str, str]
    body: Any


def sha1_digest_header(sha1_hex: str) -> str:
    """``Digest: sha=<base64>`` (RFC 3230) from a hex SHA-1, as Box wants for parts and commits."""
    return "sha=" + base64.b64encode(bytes.fromhex(sha1_hex)).decode()


class BoxClient:
    """Box API calls for one account; safe to share between all tasks of the process."""

    def __init__(
        self,
        box: BoxSettings,
        http: aiohttp.ClientSession,
        tokens: TokenProvider,
        pacer: Pacer,
        stats: Stats,
        *,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self.settings = box
        # aiohttp resends an idempotent request (a part PUT, a GET) once by itself when a reused
        # connection breaks; that resend would bypass the pacer, the backoff and the accounting,
        # so :meth:`request` must be the only retry loop. aiohttp has no public switch for it
        # (its own TestClient sets this attribute too).
        http._retry_connection = False
        self.http = http
        self.tokens = tokens
        self.pacer = pacer
        self.stats = stats
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._sleep = sleep
        # Parts of 8–64 MiB on a slow uplink take minutes; only stalls should time out.
        self._timeout = timeout or aiohttp.ClientTimeout(total=None, connect=30, sock_read=120, sock_connect=30)

    # -- the request loop --------------------------------------------------------------------

    async def request(
        self,
        op: str,
        method: str,
        url: str,
        *,
        kind: Kind = "api",
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one logical request, retrying as :func:`classify` decides; return Box's answer.

        ``op`` names the operation in metrics and errors. Raises :class:`TransientError` (after
        the backoff's attempts), :class:`PermanentError` subclasses, or
        :class:`AuthNeedsHumanError`.
        """
        attempt = limited = 0
        refreshed = False
        while True:
            await self.pacer.acquire(kind)
            token = await self.tokens.token()
            sent = {**auth_headers(token, self.settings.impersonate), **(headers or {})}
            data = body() if body is not None else None  # outside the try: a local read error is not Box's
            status: int | None = None
            answer_headers: Mapping[str, str] = {}
            payload: Any = None
            error: BaseException | None = None
            started = time.monotonic()
            try:
                async with self.http.request(
                    method, url, params=params, json=json_body, data=data, headers=sent, timeout=self._timeout
                ) as resp:
                    status, answer_headers = resp.status, resp.headers
                    raw = await resp.read()
                    payload = _decode(raw, resp.content_type)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = exc
            self.stats.request(op, status if status is not None else "error", time.monotonic() - started)
            code = _field(payload, "code")
            decision = classify(status, code, answer_headers, error)
            if isinstance(decision, Proceed):
                assert status is not None
                return Answer(status, answer_headers, payload)
            if isinstance(decision, RefreshAuth) and not refreshed:
                refreshed = True
                await self.tokens.invalidate(token)
                continue
            if isinstance(decision, Retry):
                if decision.reason == "rate_limited":
                    # A 429 is flow control, not a failure: it pauses everyone and does not use up
                    # the request's attempts, up to a generous cap against a server that never relents.
                    limited += 1
                    self.pacer.pause(decision.after if decision.after is not None else 1.0)
                else:
                    attempt += 1
                if not self.backoff.should_give_up(attempt) and limited <= MAX_RATE_LIMITED:
                    self.stats.retry(decision.reason)
                    # After a 429 the pacer holds every caller for Retry-After; no extra wait here.
                    if decision.reason != "rate_limited":
                        await self._sleep(self.backoff.next_delay(attempt, decision.after, self._rng))
                    continue
            if isinstance(decision, Fatal) and status is None:
                # Not a network failure and not Box's answer (a bug, a local error): not ours to map.
                raise decision.error or ProtocolError(f"{op}: no answer and no error")
            if status is None:
                raise TransientError(f"{op}: cannot reach Box after {attempt} attempts: {_describe(error)}")
            raise to_error(
                status,
                code,
                _field(payload, "message"),
                _field(payload, "request_id"),
                _context(payload),
                parse_retry_after(answer_headers.get("Retry-After")),
                attempts=attempt or None,
            )

    # -- endpoints ---------------------------------------------------------------------------

    def _api(self, path: str) -> str:
        return self.settings.api_url.rstrip("/") + path

    def _upload(self, path: str) -> str:
        return self.settings.upload_url.rstrip("/") + path

    async def me(self) -> User:
        answer = await self.request("users_me", "GET", self._api("/users/me"))
        return User.parse(answer.body)

    async def folder(self, folder_id: str) -> Item:
        answer = await self.request(
            "get_folder", "GET", self._api(f"/folders/{folder_id}"), params={"fields": "type,id,name,etag"}
        )
        return Item.parse(answer.body)

    async def list_page(self, folder_id: str, marker: str | None, limit: int) -> tuple[list[Item], str | None]:
        """One page of a folder's items (marker paging); the next marker, or None at the end."""
        params = {"fields": LIST_FIELDS, "usemarker": "true", "limit": str(limit)}
        if marker:
            params["marker"] = marker
        answer = await self.request("list_folder", "GET", self._api(f"/folders/{folder_id}/items"), params=params)
        items = [Item.parse(e) for e in parse_entries(answer.body, "folder listing")]
        next_marker = _field(answer.body, "next_marker")
        return items, next_marker or None

    async def create_folder(self, parent_id: str, name: str) -> Item:
        """Create ``name`` in ``parent_id``; raises NameConflictError when it exists."""
        answer = await self.request(
            "create_folder",
            "POST",
            self._api("/folders"),
            json_body={"name": name, "parent": {"id": parent_id}},
            params={"fields": "type,id,name,etag"},
        )
        return Item.parse(answer.body)

    async def upload(
        self,
        *,
        name: str,
        size: int,
        sha1_hex: str,
        content: Callable[[], Any],
        modified_at: str,
        parent_id: str | None = None,
        file_id: str | None = None,
    ) -> Item:
        """A simple upload: a new file in ``parent_id`` or a new version of ``file_id``.

        ``content()`` gives a fresh readable body per attempt; the SHA-1 goes in ``Content-MD5``
        so Box refuses (400 bad_digest) bytes that changed under us.
        """
        attrs: dict[str, Any] = {"name": name, "content_modified_at": modified_at}
        if parent_id is not None:
            attrs["parent"] = {"id": parent_id}
            url, op = self._upload("/files/content"), "upload_file"
        else:
            url, op = self._upload(f"/files/{file_id}/content"), "upload_version"

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("attributes", json.dumps(attrs), content_type="application/json")
            data.add_field("file", content(), filename=name, content_type="application/octet-stream")
            return data

        answer = await self.request(
            op, "POST", url, kind="upload", body=form, headers={"Content-MD5": sha1_hex}, params={"fields": LIST_FIELDS}
        )
        entries = parse_entries(answer.body, "upload answer")
        if not entries:
            raise ProtocolError("Box answered an upload without the file entry")
        return Item.parse(entries[0])

    async def create_session(
        self, *, size: int, name: str, folder_id: str | None = None, file_id: str | None = None
    ) -> SessionInfo:
        """A chunked upload session for a new file in ``folder_id`` or a new version of ``file_id``."""
        if file_id is None:
            url, body = (
                self._upload("/files/upload_sessions"),
                {"folder_id": folder_id, "file_size": size, "file_name": name},
            )
        else:
            url, body = self._upload(f"/files/{file_id}/upload_sessions"), {"file_size": size, "file_name": name}
        answer = await self.request("create_session", "POST", url, kind="upload", json_body=body)
        return SessionInfo.parse(answer.body)

    async def upload_part(self, endpoint: str, data: bytes, offset: int, total: int, sha1_hex: str) -> UploadedPart:
        headers = {
            "Digest": sha1_digest_header(sha1_hex),
            "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{total}",
            "Content-Type": "application/octet-stream",
        }
        answer = await self.request("upload_part", "PUT", endpoint, body=lambda: io.BytesIO(data), headers=headers)
        return UploadedPart.parse(_field(answer.body, "part"))

    async def list_parts(self, endpoint: str) -> list[UploadedPart]:
        parts: list[UploadedPart] = []
        while True:
            answer = await self.request(
                "list_parts", "GET", endpoint, params={"offset": str(len(parts)), "limit": "1000"}
            )
            page = [UploadedPart.parse(e) for e in parse_entries(answer.body, "parts listing")]
            parts += page
            total = _field(answer.body, "total_count")
            if not page or (isinstance(total, int) and len(parts) >= total):
                return parts

    async def commit(
        self, endpoint: str, parts: list[dict[str, Any]], whole_sha1_hex: str, attributes: Mapping[str, Any]
    ) -> Answer:
        """Commit a session; the answer may be 202 (not yet processed: the caller retries)."""
        return await self.request(
            "commit",
            "POST",
            endpoint,
            json_body={"parts": parts, "attributes": attributes},
            headers={"Digest": sha1_digest_header(whole_sha1_hex)},
            params={"fields": LIST_FIELDS},
        )

    async def abort(self, endpoint: str) -> None:
        await self.request("abort_session", "DELETE", endpoint)

    async def trash(self, file_id: str) -> None:
        """Move a file to Box's trash (recoverable there for the account's retention period)."""
        await self.request("trash_file", "DELETE", self._api(f"/files/{file_id}"))


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw or "json" not in content_type:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _field(payload: Any, name: str) -> Any:
    return payload.get(name) if isinstance(payload, dict) else None


def _context(payload: Any) -> dict[str, Any] | None:
    info = _field(payload, "context_info")
    return info if isinstance(info, dict) else None


def _describe(error: BaseException | None) -> str:
    return f"{type(error).__name__}: {error}" if error is not None else "no answer"
