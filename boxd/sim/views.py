"""JSON representations of emulated items, in the shapes of Box's OpenAPI schemas.

``fields=a,b`` asks for the base set (``type``, ``id``, ``etag``) plus the named fields
(``box-api-contract.md`` §1); without it each endpoint answers its default variant: mini for
folder listings, standard for uploads, full for ``GET /files/{id}`` and ``/folders/{id}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from boxd.sim.model import Account, File, Folder, User, rfc3339

BASE_FIELDS = ("type", "id", "etag")
FILE_MINI = ("type", "id", "file_version", "sequence_id", "etag", "sha1", "name")
FOLDER_MINI = ("type", "id", "sequence_id", "etag", "name")
FILE_STANDARD = (
    "type",
    "id",
    "etag",
    "sequence_id",
    "name",
    "sha1",
    "file_version",
    "description",
    "size",
    "path_collection",
    "created_at",
    "modified_at",
    "trashed_at",
    "purged_at",
    "content_created_at",
    "content_modified_at",
    "created_by",
    "modified_by",
    "owned_by",
    "shared_link",
    "parent",
    "item_status",
)
FOLDER_STANDARD = (
    "type",
    "id",
    "etag",
    "sequence_id",
    "name",
    "created_at",
    "modified_at",
    "description",
    "size",
    "path_collection",
    "created_by",
    "modified_by",
    "trashed_at",
    "purged_at",
    "content_created_at",
    "content_modified_at",
    "owned_by",
    "shared_link",
    "folder_upload_email",
    "parent",
    "item_status",
)
USER_STANDARD = (
    "type",
    "id",
    "name",
    "login",
    "created_at",
    "modified_at",
    "language",
    "timezone",
    "space_amount",
    "space_used",
    "max_upload_size",
    "status",
    "job_title",
    "phone",
    "address",
    "avatar_url",
    "notification_email",
)


def parse_fields(raw: str | None) -> tuple[str, ...] | None:
    """The ``fields`` query parameter as a tuple, or None when absent."""
    if raw is None:
        return None
    return tuple(f.strip() for f in raw.split(",") if f.strip())


def select(
    getters: dict[str, Callable[[], Any]],
    default: Iterable[str],
    fields: tuple[str, ...] | None,
    base: Iterable[str] = BASE_FIELDS,
) -> dict[str, Any]:
    """Evaluate only the fields asked for; unknown names are ignored, as Box does."""
    names = list(default) if fields is None else list(dict.fromkeys([*base, *fields]))
    return {name: getters[name]() for name in names if name in getters}


def user_mini(user: User) -> dict[str, Any]:
    return {"type": "user", "id": user.id, "name": user.name, "login": user.login}


class Views:
    """Renders items of one :class:`Account`; ``folder_getters``/``file_getters`` list every field."""

    def __init__(self, account: Account) -> None:
        self.account = account

    def folder_mini(self, folder: Folder) -> dict[str, Any]:
        return self.folder(folder, FOLDER_MINI)

    def path_collection(self, ancestors: list[Folder]) -> dict[str, Any]:
        return {"total_count": len(ancestors), "entries": [self.folder_mini(a) for a in ancestors]}

    def folder(
        self, folder: Folder, default: Iterable[str] = FOLDER_STANDARD, fields: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        acc = self.account
        root = folder.is_root
        owner = acc.users[folder.owner_id]

        def size() -> int:
            return sum(
                f.current.size
                for f in acc.files.values()
                if f.trashed_at is None and self._under(f.parent_id, folder.id)
            )

        getters: dict[str, Callable[[], Any]] = {
            "type": lambda: "folder",
            "id": lambda: acc.public_id(folder),
            "etag": lambda: None if root else str(folder.etag),
            "sequence_id": lambda: None if root else str(folder.etag),
            "name": lambda: folder.name,
            "created_at": lambda: None if root else rfc3339(folder.created_at),
            "modified_at": lambda: None if root else rfc3339(folder.modified_at),
            "description": lambda: "",
            "size": size,
            "path_collection": lambda: self.path_collection(acc.path_of(folder)),
            "created_by": lambda: user_mini(owner),
            "modified_by": lambda: user_mini(owner),
            "trashed_at": lambda: None,
            "purged_at": lambda: None,
            "content_created_at": lambda: None if root else rfc3339(folder.created_at),
            "content_modified_at": lambda: None if root else rfc3339(folder.modified_at),
            "owned_by": lambda: user_mini(owner),
            "shared_link": lambda: None,
            "folder_upload_email": lambda: None,
            "parent": lambda: None if root else self.folder_mini(acc.folders[folder.parent_id or ""]),
            "item_status": lambda: "active",
        }
        return select(getters, default, fields)

    def file(
        self, f: File, default: Iterable[str] = FILE_STANDARD, fields: tuple[str, ...] | None = None
    ) -> dict[str, Any]:
        acc = self.account
        v = f.current
        owner = acc.users[f.owner_id]
        parent = acc.folders[f.parent_id]
        getters: dict[str, Callable[[], Any]] = {
            "type": lambda: "file",
            "id": lambda: f.id,
            "etag": lambda: str(f.etag),
            "sequence_id": lambda: str(f.etag),
            "name": lambda: f.name,
            "sha1": lambda: v.sha1,
            "file_version": lambda: {"type": "file_version", "id": v.id, "sha1": v.sha1},
            "description": lambda: "",
            "size": lambda: v.size,
            "path_collection": lambda: self.path_collection([*acc.path_of(parent), parent]),
            "created_at": lambda: rfc3339(f.created_at),
            "modified_at": lambda: rfc3339(v.created_at),
            "trashed_at": lambda: None if f.trashed_at is None else rfc3339(f.trashed_at),
            "purged_at": lambda: None,
            "content_created_at": lambda: rfc3339(v.content_created_at),
            "content_modified_at": lambda: rfc3339(v.content_modified_at),
            "created_by": lambda: user_mini(owner),
            "modified_by": lambda: user_mini(owner),
            "owned_by": lambda: user_mini(owner),
            "shared_link": lambda: None,
            "parent": lambda: self.folder_mini(parent),
            "item_status": lambda: "active" if f.trashed_at is None else "trashed",
            "version_number": lambda: str(len(f.versions)),
            "extension": lambda: f.name.rsplit(".", 1)[1] if "." in f.name else "",
        }
        return select(getters, default, fields)

    def item(self, item: Folder | File, fields: tuple[str, ...] | None) -> dict[str, Any]:
        if isinstance(item, Folder):
            return self.folder(item, FOLDER_MINI, fields)
        return self.file(item, FILE_MINI, fields)

    def _under(self, folder_id: str, ancestor_id: str) -> bool:
        current: str | None = folder_id
        while current is not None:
            if current == ancestor_id:
                return True
            current = self.account.folders[current].parent_id
        return False
