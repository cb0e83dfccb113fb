"""boxd's Box client against the emulator: folders, simple and chunked uploads, faults, resume."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from boxd.box.uploader import LocalFile
from boxd.errors import InvalidNameError, PermanentError
from boxd.settings import MIB
from tests.integration.boxfix import Kit
from tests.integration.simfix import Box

pytestmark = pytest.mark.anyio


def make_file(path: Path, size: int) -> LocalFile:
    path.write_bytes(os.urandom(size))
    return LocalFile.stat(path)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


async def test_resolving_a_path_creates_each_folder_once_and_ignores_case(box: Box, kit: Kit) -> None:
    first = await kit.folders.resolve("Backups/host1/restic")
    assert await kit.folders.resolve("backups/HOST1/restic") == first
    created = box.state.stats.requests["POST /2.0/folders"]
    assert created == {"201": 3}
    kit.folders.forget(first)
    kit.folders._ids.clear()
    assert await kit.folders.resolve("Backups/host1/restic") == first  # 409s lead to the same ids
    assert box.state.stats.requests["POST /2.0/folders"] == {"201": 3, "409": 3}


async def test_names_box_refuses_fail_before_any_request(box: Box, kit: Kit) -> None:
    with pytest.raises(InvalidNameError, match="ends with a space"):
        await kit.folders.resolve("Backups/bad ")
    assert "POST /2.0/folders" not in box.state.stats.requests


async def test_a_small_file_uploads_once_and_identical_content_is_skipped(box: Box, kit: Kit, tmp_path: Path) -> None:
    folder = await kit.folders.resolve("Backups")
    local = make_file(tmp_path / "index.json", 10_000)
    item = await kit.uploader.upload(local, parent_id=folder, name="index.json")
    assert item is not None and item.sha1 == sha1(local.path)
    [listed] = await kit.folders.list(folder)
    assert await kit.uploader.upload(local, parent_id=folder, name="index.json", existing=listed) is None
    assert box.state.stats.requests["POST /api/2.0/files/content"] == {"201": 1}


async def test_a_changed_file_becomes_a_new_version_or_is_skipped_or_fails(box: Box, kit: Kit, tmp_path: Path) -> None:
    folder = await kit.folders.resolve("Backups")
    local = make_file(tmp_path / "snap", 1000)
    await kit.uploader.upload(local, parent_id=folder, name="snap")
    [listed] = await kit.folders.list(folder)
    changed = make_file(tmp_path / "snap", 2000)
    assert (
        await kit.uploader.upload(changed, parent_id=folder, name="snap", existing=listed, on_conflict="skip") is None
    )
    with pytest.raises(PermanentError, match="already exists"):
        await kit.uploader.upload(changed, parent_id=folder, name="snap", existing=listed, on_conflict="fail")
    item = await kit.uploader.upload(changed, parent_id=folder, name="snap", existing=listed)
    assert item is not None and item.id == listed.id and item.size == 2000
    assert len(box.state.account.files[listed.id].versions) == 2


async def test_a_large_file_takes_a_session_and_commits_with_its_digest(box: Box, kit: Kit, tmp_path: Path) -> None:
    folder = await kit.folders.resolve("Backups")
    local = make_file(tmp_path / "archive.tar", 60 * MIB + 123)
    saved: list[str | None] = []

    async def checkpoint(state: str | None) -> None:
        saved.append(state)

    item = await kit.uploader.upload(local, parent_id=folder, name="archive.tar", checkpoint=checkpoint)
    assert item is not None and item.sha1 == sha1(local.path) and item.size == local.size
    assert saved[-1] is None and len(saved) >= 8  # a checkpoint per part, cleared at the end
    assert box.state.stats.requests["PUT /api/2.0/files/upload_sessions/{session_id}"] == {"200": 8}
    assert kit.stats.peak_buffered_bytes <= kit.budget.limit
    assert kit.stats.buffered_bytes == 0 and kit.stats.parts_in_flight == 0
