"""Fixtures shared by the integration tests: an in-process emulator and boxd's Box client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from boxd.sim.config import Knobs
from tests.integration.boxfix import Kit, box_kit
from tests.integration.simfix import Box, running_box


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    """The emulator with default knobs (tests that need others define their own ``box``)."""
    async with running_box(tmp_path / "sim", Knobs()) as b:
        yield b


@pytest.fixture
async def kit(box: Box, tmp_path: Path) -> AsyncIterator[Kit]:
    """boxd's Box client (auth, pacer, folders, uploader) wired to ``box``."""
    async with box_kit(box, tmp_path / "state") as k:
        yield k
