"""A separate process that uploads one file through a chunked session, for tests that kill it.

``python -m tests.integration.upload_child SETTINGS STATE_DIR FILE CHECKPOINT`` reads ``[box]``
settings (JSON) from SETTINGS, uploads FILE into the folder ``Backups`` and writes every
checkpoint the uploader hands out to CHECKPOINT, atomically (temp file, rename), so a reader
always finds a complete one however the process ends.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio

from boxd.box.uploader import LocalFile
from boxd.settings import BoxSettings
from tests.integration.boxfix import settings_kit

PART_CONCURRENCY = 4


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def upload(settings_path: Path, state_dir: Path, file: Path, checkpoint_path: Path) -> None:
    settings = BoxSettings.model_validate(json.loads(await anyio.Path(settings_path).read_text()))

    async def checkpoint(state: str | None) -> None:
        if state is not None:
            await anyio.to_thread.run_sync(write_atomically, checkpoint_path, state)

    async with settings_kit(settings, state_dir, part_concurrency=PART_CONCURRENCY) as kit:
        folder = await kit.folders.resolve("Backups")
        local = await anyio.to_thread.run_sync(LocalFile.stat, file)
        await kit.uploader.upload(local, parent_id=folder, name=file.name, checkpoint=checkpoint)


def main(argv: list[str]) -> None:
    settings_path, state_dir, file, checkpoint_path = (Path(a) for a in argv)
    anyio.run(upload, settings_path, state_dir, file, checkpoint_path)


if __name__ == "__main__":
    main(sys.argv[1:])
