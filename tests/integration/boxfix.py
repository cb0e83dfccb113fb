"""boxd's Box client wired to an emulator (in-process or a subprocess), as the daemon will wire it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from boxd.accounting import Stats
from boxd.box.auth import provider_from_settings
from boxd.box.client import BoxClient
from boxd.box.folders import Folders
from boxd.box.pacing import Pacer
from boxd.box.retry import Backoff
from boxd.box.uploader import MemoryBudget, Uploader
from boxd.settings import MIB, BoxSettings
from tests.integration.simfix import Box


@dataclass
class Kit:
    settings: BoxSettings
    client: BoxClient
    folders: Folders
    uploader: Uploader
    stats: Stats
    budget: MemoryBudget


def box_settings(box: Box, **overrides: Any) -> BoxSettings:
    """``[box]`` settings pointing at the emulator, with a fresh OAuth token blob for its user."""
    a = box.state.authority
    blob = a.rclone_blob(a.issue(box.state.user.id, with_refresh=True))
    values: dict[str, Any] = {
        "client_id": a.client_id,
        "client_secret": SecretStr(a.client_secret),
        "token": SecretStr(json.dumps(blob)),
        "api_url": f"{box.base}/2.0",
        "upload_url": f"{box.base}/api/2.0",
        "token_url": f"{box.base}/oauth2/token",
        **overrides,
    }
    return BoxSettings(**values)


@asynccontextmanager
async def settings_kit(
    settings: BoxSettings,
    state_dir: Path,
    *,
    clock: Callable[[], float] = time.time,
    memory_limit: int = 64 * MIB,
    part_concurrency: int = 4,
) -> AsyncIterator[Kit]:
    """A client for ``settings``; ``clock`` is the token provider's (the emulator's, or one it does not share)."""
    stats = Stats()
    async with aiohttp.ClientSession() as http:
        tokens = await provider_from_settings(settings, state_dir, http, stats, clock=clock)
        pacer = Pacer.from_settings(settings, stats=stats)
        # Short backoff: tests exercise the retry paths, not the waiting.
        client = BoxClient(settings, http, tokens, pacer, stats, backoff=Backoff(base=0.01, cap=0.05, max_attempts=6))
        budget = MemoryBudget(memory_limit, stats)
        uploader = Uploader(client, budget, upload_cutoff=settings.upload_cutoff, part_concurrency=part_concurrency)
        folders = Folders(client, settings.root_folder_id, list_chunk=settings.list_chunk, owned_by=settings.owned_by)
        yield Kit(settings, client, folders, uploader, stats, budget)


@asynccontextmanager
async def box_kit(
    box: Box,
    state_dir: Path,
    *,
    memory_limit: int = 64 * MIB,
    part_concurrency: int = 4,
    clock: Callable[[], float] | None = None,
    **overrides: Any,
) -> AsyncIterator[Kit]:
    """A client of the in-process emulator; its token provider shares ``box.clock`` unless given ``clock``."""
    settings = box_settings(box, **overrides)
    async with settings_kit(
        settings, state_dir, clock=clock or box.clock, memory_limit=memory_limit, part_concurrency=part_concurrency
    ) as kit:
        yield kit
