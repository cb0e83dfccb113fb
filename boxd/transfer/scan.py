"""The local side of a job: which files a source holds, and whether boxd may read them.

Only paths under ``daemon.allowed_sources`` are read. A symlink is followed only when its
target also lies under an allowed source, so a link cannot smuggle ``/etc/shadow`` into a
backup; links that point elsewhere, sockets, devices and FIFOs are left out and reported.
Everything here blocks: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from boxd.errors import PermanentError


class SourceError(PermanentError):
    """The job's source cannot be used; ``field`` names the request field to blame."""

    def __init__(self, message: str, field: str = "source") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class LocalEntry:
    """One regular file of a source: its path relative to the source (``/``-separated) and its stat."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    inode: int


@dataclass
class Scan:
    files: list[LocalEntry] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # relative directories, parents before children
    left_out: list[str] = field(default_factory=list)  # relative paths, with the reason


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def check_source(source: Path, allowed: list[Path]) -> Path:
    """``source`` resolved, if it exists and lies (after resolving links) under an allowed source."""
    if not source.is_absolute():
        raise SourceError(f"source must be an absolute path, got {str(source)!r}")
    if ".." in source.parts:
        raise SourceError(f"source must not contain '..': {str(source)!r}")
    roots = [root.resolve() for root in allowed]
    if not roots:
        raise SourceError("no source may be uploaded: daemon.allowed_sources is empty")
    try:
        resolved = source.resolve(strict=True)
    except FileNotFoundError:
        raise SourceError(f"source {str(source)!r} does not exist") from None
    except OSError as exc:
        raise SourceError(f"source {str(source)!r} cannot be read: {exc.strerror}") from None
    if not _inside(resolved, roots):
        raise SourceError(
            f"source {str(source)!r} is not under daemon.allowed_sources ({', '.join(str(r) for r in allowed)})"
        )
    if not (resolved.is_file() or resolved.is_dir()):
        raise SourceError(f"source {str(source)!r} is neither a regular file nor a directory")
    return resolved


def scan(source: Path, allowed: list[Path]) -> Scan:
    """Every regular file under ``source`` (or ``source`` itself if it is a file), sorted by path."""
    root = check_source(source, allowed)
    roots = [r.resolve() for r in allowed]
    result = Scan()
    if root.is_file():
        st = root.stat()
        result.files.append(LocalEntry(root.name, root, st.st_size, st.st_mtime_ns, st.st_ino))
        return result
    seen_dirs: set[tuple[int, int]] = set()
    _walk(root, "", roots, result, seen_dirs)
    result.files.sort(key=lambda e: e.rel)
    return result


def _walk(directory: Path, prefix: str, roots: list[Path], out: Scan, seen: set[tuple[int, int]]) -> None:
    st = directory.stat()
    if (st.st_dev, st.st_ino) in seen:  # a link loop
        out.left_out.append(f"{prefix or '.'}: directory loop")
        return
    seen.add((st.st_dev, st.st_ino))
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"cannot list {directory}: {exc.strerror}") from None
    for entry in entries:
        rel = f"{prefix}{entry.name}"
        path = Path(entry.path)
        if entry.is_symlink():
            target = path.resolve()
            if not _inside(target, roots):
                out.left_out.append(f"{rel}: symlink pointing outside daemon.allowed_sources")
                continue
        try:
            info = path.stat()
        except OSError as exc:
            out.left_out.append(f"{rel}: {exc.strerror}")
            continue
        if stat.S_ISDIR(info.st_mode):
            out.dirs.append(rel)
            _walk(path, rel + "/", roots, out, seen)
        elif stat.S_ISREG(info.st_mode):
            out.files.append(LocalEntry(rel, path, info.st_size, info.st_mtime_ns, info.st_ino))
        else:
            out.left_out.append(f"{rel}: not a regular file")
