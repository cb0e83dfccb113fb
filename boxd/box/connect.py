"""Wiring one Box account together: HTTP session, token provider, pacer, client, folders, uploader.

Used by the daemon and by ``boxd check`` so both talk to Box exactly the same way. Outbound
HTTP honours ``HTTPS_PROXY``/``NO_PROXY`` (``trust_env``) and ``SSL_CERT_FILE`` (OpenSSL's
default paths), plus ``[box] ca_file`` for a TLS-inspecting proxy, as rclone does.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from boxd.accounting import Stats
from boxd.box.auth import TokenProvider, provider_from_settings
from boxd.box.client import BoxClient
from boxd.box.folders import Folders
from boxd.box.pacing import Pacer
from boxd.box.retry import Backoff
from boxd.box.uploader import MemoryBudget, Uploader
from boxd.errors import ConfigError
from boxd.settings import Settings


@dataclass
class BoxStack:
    http: aiohttp.ClientSession
    tokens: TokenProvider
    pacer: Pacer
    client: BoxClient
    folders: Folders
    uploader: Uploader
    budget: MemoryBudget


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"invalid configuration: box.ca_file: cannot load {ca_file}: {exc}") from None
    return ctx


@asynccontextmanager
async def open_box(settings: Settings, stats: Stats) -> AsyncIterator[BoxStack]:
    """Everything needed to talk to Box; closes the HTTP session on exit."""
    box = settings.box
    connector = aiohttp.TCPConnector(ssl=ssl_context(box.ca_file), limit=64, limit_per_host=32)
    async with aiohttp.ClientSession(connector=connector, trust_env=True) as http:
        tokens = await provider_from_settings(box, settings.daemon.state_dir, http, stats)
        pacer = Pacer.from_settings(box, stats=stats)
        client = BoxClient(box, http, tokens, pacer, stats, backoff=Backoff(max_attempts=settings.daemon.max_attempts))
        budget = MemoryBudget(settings.daemon.memory_limit, stats)
        uploader = Uploader(
            client, budget, upload_cutoff=box.upload_cutoff, part_concurrency=settings.daemon.part_concurrency
        )
        folders = Folders(client, box.root_folder_id, list_chunk=box.list_chunk, owned_by=box.owned_by)
        yield BoxStack(http, tokens, pacer, client, folders, uploader, budget)
