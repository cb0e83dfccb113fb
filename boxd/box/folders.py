"""Destination folders: resolve paths under the root folder, create what is missing, list contents.

Box names are unique per folder case-insensitively, so caches key on the case-folded name.
Resolving creates each missing folder with one call: a 201 or a 409 ``item_name_in_use``
(whose ``context_info`` names the existing folder) both give the id, so concurrent creators
(two jobs, two daemons) converge without listing anything.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import anyio

from boxd.box.client import BoxClient
from boxd.box.models import Item
from boxd.errors import InvalidNameError, NameConflictError, PermanentError

MAX_NAME = 255


def check_name(name: str) -> str:
    """Return ``name`` if Box accepts it, else raise :class:`InvalidNameError` saying why.

    Box refuses empty names, ``.`` and ``..``, names over 255 characters, ``/`` and ``\\``,
    trailing spaces and control characters (``box-api-contract.md`` §4.1).
    """
    why = None
    if not name or name in (".", ".."):
        why = "empty, '.' and '..' are not names"
    elif len(name) > MAX_NAME:
        why = f"longer than {MAX_NAME} characters"
    elif "/" in name or "\\" in name:
        why = "contains '/' or '\\'"
    elif name != name.rstrip(" "):
        why = "ends with a space"
    elif any(unicodedata.category(c) == "Cc" for c in name):
        why = "contains a control character"
    if why is not None:
        raise InvalidNameError(f"Box does not accept the name {name!r}: {why}")
    return name


def split_path(path: str) -> list[str]:
    """``"Backups/host1"`` → ``["Backups", "host1"]``, each checked; empty segments are ignored."""
    return [check_name(part) for part in path.split("/") if part]


def fold(name: str) -> str:
    return name.casefold()


class Folders:
    """Folder ids by path under ``root_id``, with a cache shared by every job of the process."""

    def __init__(self, client: BoxClient, root_id: str, *, list_chunk: int = 1000, owned_by: str = "") -> None:
        self.client = client
        self.root_id = root_id
        self.list_chunk = list_chunk
        self.owned_by = owned_by
        self._ids: dict[tuple[str, str], str] = {}  # (parent id, folded name) -> folder id
        self._locks: dict[tuple[str, str], anyio.Lock] = {}

    async def resolve(self, path: str | Sequence[str], *, parent_id: str | None = None) -> str:
        """The id of the folder at ``path`` under ``parent_id`` (default the root), creating it as needed."""
        folder = parent_id or self.root_id
        for name in split_path(path) if isinstance(path, str) else [check_name(n) for n in path]:
            folder = await self.child(folder, name)
        return folder

    async def child(self, parent_id: str, name: str) -> str:
        """The id of folder ``name`` in ``parent_id``, created if missing (one call, or none if cached)."""
        key = (parent_id, fold(name))
        if (cached := self._ids.get(key)) is not None:
            return cached
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:  # one creator per name in this process; others wait for its answer
            if (cached := self._ids.get(key)) is not None:
                return cached
            try:
                folder_id = (await self.client.create_folder(parent_id, name)).id
            except NameConflictError as exc:
                existing = exc.conflict
                if existing is None or existing.get("type") != "folder" or not isinstance(existing.get("id"), str):
                    kind = existing.get("type", "item") if existing else "item"
                    raise PermanentError(f"cannot create folder {name!r}: a {kind} of that name is in the way") from exc
                folder_id = existing["id"]
            self._ids[key] = folder_id
            return folder_id

    def remember(self, parent_id: str, item: Item) -> None:
        """Cache a folder seen in a listing, saving a call when it is resolved later."""
        if item.is_folder:
            self._ids[(parent_id, fold(item.name))] = item.id

    def forget(self, folder_id: str) -> None:
        """Drop cache entries pointing at ``folder_id`` (e.g. after Box said it no longer exists)."""
        for key in [k for k, v in self._ids.items() if v == folder_id or k[0] == folder_id]:
            del self._ids[key]

    async def list(self, folder_id: str) -> list[Item]:
        """Every item of a folder (marker paging, ``list_chunk`` a page), honouring ``owned_by``."""
        items: list[Item] = []
        marker: str | None = None
        while True:
            page, marker = await self.client.list_page(folder_id, marker, self.list_chunk)
            items += page
            if marker is None:
                break
        for item in items:
            self.remember(folder_id, item)
        if self.owned_by:
            wanted = self.owned_by.casefold()
            items = [i for i in items if i.owner_login is None or i.owner_login.casefold() == wanted]
        return items
