"""An in-process emulator on a real loopback socket, with a clock the test controls."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
from aiohttp.test_utils import TestServer

from boxd.sim.app import create_app
from boxd.sim.appkeys import TOKEN_AUDIENCE, JwtVerifier, load_box_config_keys
from boxd.sim.config import Knobs
from boxd.sim.server import load_or_create_app_config
from boxd.sim.state import SimState


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any
    raw: bytes = b""


@dataclass
class Box:
    """A client of the in-process emulator; ``token`` is the OAuth user's access token."""

    state: SimState
    http: aiohttp.ClientSession
    base: str
    clock: Clock
    token: str = ""
    refresh_token: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
    ) -> Reply:
        h = {**self.extra_headers, **(headers or {})}
        if auth:
            h.setdefault("Authorization", f"Bearer {self.token}")
        async with self.http.request(method, self.base + path, json=json_body, data=data, headers=h) as resp:
            raw = await resp.read()
            body: Any = None
            if raw and resp.content_type == "application/json":
                body = json.loads(raw)
            return Reply(resp.status, resp.headers, body, raw)

    async def folder(self, name: str, parent: str = "0") -> str:
        r = await self.call("POST", "/2.0/folders", json_body={"name": name, "parent": {"id": parent}})
        assert r.status == 201, r.body
        return str(r.body["id"])

    async def upload(
        self,
        name: str,
        content: bytes,
        parent: str = "0",
        *,
        sha1: str | None = None,
        file_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        form = aiohttp.FormData()
        attrs: dict[str, Any] = {"name": name}
        if file_id is None:
            attrs["parent"] = {"id": parent}
        form.add_field("attributes", json.dumps(attrs))
        form.add_field("file", content, filename=name, content_type="application/octet-stream")
        h = {"Content-MD5": sha1 or hashlib.sha1(content).hexdigest(), **(headers or {})}
        path = "/api/2.0/files/content" if file_id is None else f"/api/2.0/files/{file_id}/content"
        return await self.call("POST", path, data=form, headers=h)

    async def session(self, name: str, size: int, parent: str = "0") -> dict[str, Any]:
        r = await self.call(
            "POST",
            "/api/2.0/files/upload_sessions",
            json_body={"folder_id": parent, "file_size": size, "file_name": name},
        )
        assert r.status == 201, r.body
        return dict(r.body)

    async def put_part(
        self, session: dict[str, Any], data: bytes, offset: int, total: int, digest: str | None = None
    ) -> Reply:
        url = session["session_endpoints"]["upload_part"].removeprefix(self.base)
        h = {
            "Digest": digest or f"sha={b64sha1(data)}",
            "Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{total}",
            "Content-Type": "application/octet-stream",
        }
        return await self.call("PUT", url, data=io.BytesIO(data), headers=h)

    async def commit(self, session: dict[str, Any], parts: list[dict[str, Any]], whole: bytes | str) -> Reply:
        url = session["session_endpoints"]["commit"].removeprefix(self.base)
        digest = whole if isinstance(whole, str) else b64sha1(whole)
        return await self.call("POST", url, json_body={"parts": parts}, headers={"Digest": f"sha={digest}"})

    async def upload_chunked(self, name: str, data: bytes, parent: str = "0") -> Reply:
        s = await self.session(name, len(data), parent)
        parts = []
        for off in range(0, len(data), s["part_size"]):
            r = await self.put_part(s, data[off : off + s["part_size"]], off, len(data))
            assert r.status == 200, r.body
            parts.append(r.body["part"])
        return await self.commit(s, parts, data)


def b64sha1(data: bytes) -> str:
    return base64.b64encode(hashlib.sha1(data).digest()).decode()


@asynccontextmanager
async def running_box(data_dir: Path, knobs: Knobs | None = None) -> AsyncIterator[Box]:
    """Start the emulator app on a loopback port and yield a client holding a fresh token."""
    clock = Clock()

    def make_state() -> SimState:  # key generation and file I/O: off the event loop
        data_dir.mkdir(parents=True, exist_ok=True)
        config = load_or_create_app_config(data_dir)
        verifier = JwtVerifier(load_box_config_keys(config), audiences=(TOKEN_AUDIENCE,), clock=clock)
        return SimState.create(data_dir, knobs or Knobs(), config, verifier, clock=clock)

    state = await anyio.to_thread.run_sync(make_state)
    server = TestServer(create_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            base = str(server.make_url("")).rstrip("/")
            issued = state.authority.issue(state.user.id, with_refresh=True)
            yield Box(state, http, base, clock, issued["access_token"], issued["refresh_token"])
    finally:
        await server.close()
