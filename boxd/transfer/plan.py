"""Comparing a scanned source with the destination's listing: what to upload, skip and trash (pure).

``copy`` uploads new files and changed ones (different size, or same size and different
SHA-1) and skips identical ones. ``mirror`` also moves remote files that no longer exist
locally to Box's trash, but refuses when that would remove more than
``mirror_max_delete_percent`` of the remote files: an unmounted backup disk must not empty
the Box copy. Box compares names case-insensitively, so local names that differ only by case
cannot both be uploaded; the second one is reported instead of silently overwriting the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from boxd.errors import PermanentError
from boxd.transfer.scan import LocalEntry

Mode = Literal["copy", "mirror"]


@dataclass(frozen=True)
class RemoteFile:
    """A file in the destination tree: path relative to the destination folder, Box id, size, SHA-1."""

    rel: str
    id: str
    size: int | None
    sha1: str | None


@dataclass
class Plan:
    upload: list[tuple[LocalEntry, RemoteFile | None]] = field(default_factory=list)  # (local, file it replaces)
    skip: list[LocalEntry] = field(default_factory=list)
    trash: list[RemoteFile] = field(default_factory=list)
    clashes: list[str] = field(default_factory=list)  # local paths that differ from another only by case


class MassDeleteRefused(PermanentError):
    """Mirroring would delete too much of the Box copy; nothing was deleted."""


def fold(rel: str) -> str:
    return rel.casefold()


def make_plan(
    local: list[LocalEntry],
    remote: list[RemoteFile],
    *,
    mode: Mode,
    max_delete_percent: float,
    local_sha1: Callable[[LocalEntry], str],
) -> Plan:
    """Decide every file's fate. ``local_sha1`` is asked only when sizes match (it may read the file)."""
    plan = Plan()
    by_name = {fold(r.rel): r for r in remote}
    taken: dict[str, str] = {}
    for entry in local:
        key = fold(entry.rel)
        if key in taken:
            plan.clashes.append(f"{entry.rel} (differs only by case from {taken[key]})")
            continue
        taken[key] = entry.rel
        existing = by_name.get(key)
        if existing is None:
            plan.upload.append((entry, None))
        elif existing.size == entry.size and existing.sha1 is not None and existing.sha1 == local_sha1(entry):
            plan.skip.append(entry)
        else:
            plan.upload.append((entry, existing))
    if mode == "mirror":
        plan.trash = [r for key, r in by_name.items() if key not in taken]
        if remote and len(plan.trash) * 100 > max_delete_percent * len(remote):
            raise MassDeleteRefused(
                f"mirror would move {len(plan.trash)} of {len(remote)} files on Box to the trash "
                f"({len(plan.trash) * 100 / len(remote):.0f}%, more than daemon.mirror_max_delete_percent = "
                f"{max_delete_percent:g}%); is the backup disk mounted? Nothing was deleted"
            )
    return plan
