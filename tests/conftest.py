"""Shared fixtures and the skip policy.

Tests that need material or tools a fresh clone may lack (``../shared``, root, rclone,
prometheus) call :func:`require`. It skips with a clear reason on a developer's machine and
fails under ``CI=true``, where every such test must run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.simproc import Sim, running_sim

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BOXD_SHARED", REPO.parent / "shared"))
OPENAPI_JSON = SHARED / "box-openapi" / "openapi.json"
BOX_NETNS = SHARED / "tools" / "box-netns"


def require(condition: bool, reason: str) -> None:
    """Skip the calling test unless ``condition`` holds; under ``CI=true`` fail instead."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    """A fresh emulator subprocess with default settings (no rate limits)."""
    with running_sim(tmp_path / "sim") as s:
        yield s
