"""The emulator's in-memory Box account: users, folders, files, versions, upload sessions.

Pure data and rules, no I/O: handlers call these methods and write bytes to disk themselves.
Every rule that Box enforces on names and trees lives here, raising :class:`BoxApiError`
exactly as Box answers it (``box-api-contract.md`` §4, §6).
"""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from boxd.sim.errors import BoxApiError, param_error

ROOT_ID = "0"


def rfc3339(ts: float) -> str:
    """Box's timestamp form: seconds precision with an explicit offset."""
    return datetime.fromtimestamp(int(ts), UTC).isoformat()


@dataclass
class User:
    id: str
    name: str
    login: str
    enterprise_id: str
    #: Admins and service accounts may act as other users (``As-User``).
    can_impersonate: bool = False
    is_service_account: bool = False
    created_at: float = field(default_factory=time.time)


@dataclass
class Folder:
    id: str
    name: str
    parent_id: str | None  # None for a user's root folder
    owner_id: str
    created_at: float
    modified_at: float
    etag: int = 0
    #: lower-cased name -> ("folder"|"file", id); Box names are unique case-insensitively.
    children: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def is_root(self) -> bool:
        return self.parent_id is None


@dataclass
class Version:
    id: str
    sha1: str
    size: int
    blob: Path
    created_at: float
    content_created_at: float
    content_modified_at: float


@dataclass
class File:
    id: str
    name: str
    parent_id: str
    owner_id: str
    created_at: float
    versions: list[Version]
    etag: int = 0
    trashed_at: float | None = None

    @property
    def current(self) -> Version:
        return self.versions[-1]


@dataclass
class Part:
    part_id: str
    offset: int
    size: int
    sha1: str  # hex

    def as_json(self) -> dict[str, object]:
        return {"part_id": self.part_id, "offset": self.offset, "size": self.size, "sha1": self.sha1}


@dataclass
class Session:
    id: str
    owner_id: str
    folder_id: str
    file_id: str | None  # set for a new version of an existing file
    file_name: str
    file_size: int
    part_size: int
    created_at: float
    expires_at: float
    directory: Path
    parts: dict[int, Part] = field(default_factory=dict)  # by offset
    state: str = "open"  # open | committed | aborted | expired
    commits_seen: int = 0
    mismatches_sent: int = 0
    committing: bool = False

    @property
    def total_parts(self) -> int:
        return -(-self.file_size // self.part_size)

    def expected_length(self, offset: int) -> int:
        return min(self.part_size, self.file_size - offset)


def check_name(name: object, field_name: str = "name") -> str:
    """Box's name rules (``paths./folders.post`` name); 400 with Box's codes otherwise."""
    if not isinstance(name, str) or name == "":
        raise param_error(400, "bad_request", "missing_parameter", field_name, f"'{field_name}' is required")
    if len(name) > 255:
        raise BoxApiError(400, "item_name_too_long", "Item name too long")
    if (
        name in (".", "..")
        or "/" in name
        or "\\" in name
        or name != name.rstrip(" ")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise BoxApiError(400, "item_name_invalid", "Item name invalid")
    return name


class Account:
    """All users and content of the emulated Box enterprise."""

    def __init__(self, enterprise_id: str = "1234567") -> None:
        self.enterprise_id = enterprise_id
        self.users: dict[str, User] = {}
        self.roots: dict[str, str] = {}  # user id -> root folder id
        self.folders: dict[str, Folder] = {}
        self.files: dict[str, File] = {}
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(100_000_000_001)

    def next_id(self) -> str:
        return str(next(self._ids))

    # -- users -----------------------------------------------------------------------------

    def add_user(self, user: User) -> User:
        self.users[user.id] = user
        now = time.time()
        root = Folder(
            id=self.next_id(), name="All Files", parent_id=None, owner_id=user.id, created_at=now, modified_at=now
        )
        self.folders[root.id] = root
        self.roots[user.id] = root.id
        return user

    def space_used(self, user_id: str) -> int:
        return sum(v.size for f in self.files.values() if f.owner_id == user_id for v in f.versions)

    # -- folders -----------------------------------------------------------------------------

    def public_id(self, folder: Folder) -> str:
        """The id clients see: every user's root is folder ``"0"``."""
        return ROOT_ID if folder.is_root else folder.id

    def folder(self, user: User, folder_id: str, *, param: str | None = None, code: str = "not_found") -> Folder:
        """The folder ``folder_id`` as ``user`` sees it; 404 when missing or not theirs."""
        fid = self.roots[user.id] if folder_id == ROOT_ID else folder_id
        folder = self.folders.get(fid)
        if folder is None or folder.owner_id != user.id:
            if param is not None:
                raise param_error(
                    404,
                    code,
                    "invalid_parameter",
                    param,
                    f"Invalid value 'd_{folder_id}'. '{param}' with value 'd_{folder_id}' not found",
                )
            raise BoxApiError(404, "not_found", "Not Found")
        return folder

    def file(self, user: User, file_id: str) -> File:
        f = self.files.get(file_id)
        if f is None or f.owner_id != user.id:
            raise BoxApiError(404, "not_found", "Not Found")
        if f.trashed_at is not None:
            raise BoxApiError(404, "trashed", "Item is trashed")
        return f

    def path_of(self, folder: Folder) -> list[Folder]:
        """Ancestors of ``folder`` from the root down, ``folder`` itself excluded."""
        chain: list[Folder] = []
        parent_id = folder.parent_id
        while parent_id is not None:
            parent = self.folders[parent_id]
            chain.append(parent)
            parent_id = parent.parent_id
        return chain[::-1]

    def conflict(self, parent: Folder, name: str) -> tuple[str, str] | None:
        return parent.children.get(name.lower())

    def check_free(self, parent: Folder, name: str) -> None:
        """409 ``item_name_in_use`` if ``parent`` holds an item of that name (case-insensitively)."""
        if (existing := self.conflict(parent, name)) is not None:
            raise self.name_in_use(existing)

    def create_folder(self, user: User, parent: Folder, name: str) -> Folder:
        check_name(name)
        self.check_free(parent, name)
        now = time.time()
        folder = Folder(
            id=self.next_id(), name=name, parent_id=parent.id, owner_id=user.id, created_at=now, modified_at=now
        )
        self.folders[folder.id] = folder
        parent.children[name.lower()] = ("folder", folder.id)
        parent.modified_at = now
        return folder

    def name_in_use(self, existing: tuple[str, str]) -> BoxApiError:
        """409 ``item_name_in_use``; files conflict as an object, folders as an array (as Box does)."""
        kind, item_id = existing
        conflicts: object
        if kind == "file":
            f = self.files[item_id]
            conflicts = {
                "type": "file",
                "id": f.id,
                "file_version": {"type": "file_version", "id": f.current.id, "sha1": f.current.sha1},
                "sequence_id": str(f.etag),
                "etag": str(f.etag),
                "sha1": f.current.sha1,
                "name": f.name,
            }
        else:
            d = self.folders[item_id]
            conflicts = [
                {"type": "folder", "id": d.id, "sequence_id": str(d.etag), "etag": str(d.etag), "name": d.name}
            ]
        return BoxApiError(
            409, "item_name_in_use", "Item with the same name already exists", context_info={"conflicts": conflicts}
        )

    def items(self, folder: Folder) -> list[Folder | File]:
        """Children as Box orders them: folders first, then files, each by name."""
        folders: list[Folder | File] = []
        files: list[Folder | File] = []
        for kind, item_id in folder.children.values():
            if kind == "folder":
                folders.append(self.folders[item_id])
            else:
                files.append(self.files[item_id])
        return sorted(folders, key=lambda i: i.name.lower()) + sorted(files, key=lambda i: i.name.lower())

    # -- files -----------------------------------------------------------------------------

    def add_file(self, user: User, parent: Folder, name: str, version: Version) -> File:
        self.check_free(parent, name)
        f = File(
            id=self.next_id(),
            name=name,
            parent_id=parent.id,
            owner_id=user.id,
            created_at=version.created_at,
            versions=[version],
        )
        self.files[f.id] = f
        parent.children[name.lower()] = ("file", f.id)
        parent.modified_at = version.created_at
        return f

    def add_version(self, f: File, version: Version, new_name: str | None = None) -> None:
        if new_name is not None and new_name != f.name:
            parent = self.folders[f.parent_id]
            existing = self.conflict(parent, new_name)
            if existing is not None and existing != ("file", f.id):
                raise self.name_in_use(existing)
            del parent.children[f.name.lower()]
            parent.children[new_name.lower()] = ("file", f.id)
            f.name = new_name
        f.versions.append(version)
        f.etag += 1

    def trash_file(self, f: File) -> None:
        parent = self.folders[f.parent_id]
        parent.children.pop(f.name.lower(), None)
        f.trashed_at = time.time()

    def new_version_id(self) -> str:
        return self.next_id()

    def new_session_id(self) -> str:
        return secrets.token_hex(16).upper()
