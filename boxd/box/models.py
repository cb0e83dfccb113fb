"""Wire types of the Box API that boxd reads, parsed strictly at the boundary.

Parsing raises :class:`ProtocolError` naming the field when Box answers something unexpected,
so code past this module can trust its types. Sizes are parsed as int or float (Box may print
very large numbers in exponent form; rclone#2261).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boxd.errors import ProtocolError


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind) or isinstance(obj[key], bool):
        raise ProtocolError(f"Box answered an unexpected {where}: field {key!r} missing or of the wrong type")
    return obj[key]


def _size(obj: Any, key: str, where: str) -> int:
    return int(_get(obj, key, (int, float), where))


@dataclass(frozen=True)
class User:
    id: str
    login: str
    name: str
    space_amount: int
    space_used: int
    max_upload_size: int

    @classmethod
    def parse(cls, obj: Any) -> User:
        w = "user"
        return cls(
            id=_get(obj, "id", str, w),
            login=str(obj.get("login", "")),
            name=str(obj.get("name", "")),
            space_amount=_size(obj, "space_amount", w),
            space_used=_size(obj, "space_used", w),
            max_upload_size=_size(obj, "max_upload_size", w),
        )

    @property
    def space_left(self) -> int:
        return max(0, self.space_amount - self.space_used)


@dataclass(frozen=True)
class Item:
    """A file or folder entry of a listing (``type``, ``id``, ``name``; files: ``size``, ``sha1``)."""

    type: str  # "file" | "folder" | "web_link"
    id: str
    name: str
    size: int | None = None
    sha1: str | None = None
    etag: str | None = None
    owner_login: str | None = None

    @classmethod
    def parse(cls, obj: Any) -> Item:
        w = "item"
        kind = _get(obj, "type", str, w)
        size = obj.get("size")
        owned = obj.get("owned_by")
        return cls(
            type=kind,
            id=_get(obj, "id", str, w),
            name=_get(obj, "name", str, w),
            size=int(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
            sha1=obj.get("sha1") if isinstance(obj.get("sha1"), str) else None,
            etag=obj.get("etag") if isinstance(obj.get("etag"), str) else None,
            owner_login=owned.get("login") if isinstance(owned, dict) else None,
        )

    @property
    def is_folder(self) -> bool:
        return self.type == "folder"

    @property
    def is_file(self) -> bool:
        return self.type == "file"


@dataclass(frozen=True)
class SessionInfo:
    """An upload session as Box created it (``UploadSession``)."""

    id: str
    part_size: int
    total_parts: int
    expires_at: str
    endpoints: dict[str, str]

    @classmethod
    def parse(cls, obj: Any) -> SessionInfo:
        w = "upload session"
        endpoints = _get(obj, "session_endpoints", dict, w)
        for name in ("upload_part", "commit", "abort", "list_parts"):
            _get(endpoints, name, str, w)
        return cls(
            id=_get(obj, "id", str, w),
            part_size=_size(obj, "part_size", w),
            total_parts=_size(obj, "total_parts", w),
            expires_at=str(obj.get("session_expires_at", "")),
            endpoints={k: v for k, v in endpoints.items() if isinstance(v, str)},
        )


@dataclass(frozen=True)
class UploadedPart:
    part_id: str
    offset: int
    size: int
    sha1: str | None

    @classmethod
    def parse(cls, obj: Any) -> UploadedPart:
        w = "upload part"
        sha1 = obj.get("sha1") if isinstance(obj, dict) else None
        return cls(
            part_id=_get(obj, "part_id", str, w),
            offset=_size(obj, "offset", w),
            size=_size(obj, "size", w),
            sha1=sha1 if isinstance(sha1, str) else None,
        )

    def as_json(self) -> dict[str, Any]:
        return {"part_id": self.part_id, "offset": self.offset, "size": self.size, "sha1": self.sha1}


def parse_entries(obj: Any, where: str) -> list[Any]:
    entries = _get(obj, "entries", list, where)
    return list(entries)
