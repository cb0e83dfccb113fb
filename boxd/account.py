"""Commands that talk to Box or the token store directly, not through the daemon.

``boxd check`` is Pluton's "Test Connection"; ``boxd token import`` stores the blob that
``rclone authorize "box"`` prints. The token store needs write access to ``state_dir`` (root or
the boxd user), never the control socket: whoever can replace the token can redirect uploads.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from boxd.accounting import Stats
from boxd.box.connect import open_box
from boxd.box.tokens import TOKEN_FILE, TokenBlob, write_token_file
from boxd.errors import BoxdError
from boxd.settings import Settings


@dataclass(frozen=True)
class CheckReport:
    auth: str
    user: str
    login: str
    space_left: int
    space_amount: int
    max_upload_size: int
    root_folder: str


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    raise AssertionError("unreachable")


async def check(settings: Settings) -> CheckReport:
    """Authenticate, read ``/users/me`` and the root folder; raise a :class:`BoxdError` if any step fails."""
    async with open_box(settings, Stats()) as box:
        me = await box.client.me()
        root = await box.client.folder(settings.box.root_folder_id)
        return CheckReport(
            auth=box.tokens.name,
            user=me.name,
            login=me.login,
            space_left=me.space_left,
            space_amount=me.space_amount,
            max_upload_size=me.max_upload_size,
            root_folder=f"{root.name} ({root.id})",
        )


def print_check(report: CheckReport) -> None:
    print(f"auth:            {report.auth}")
    print(f"user:            {report.user} <{report.login}>")
    print(f"space left:      {human(report.space_left)} of {human(report.space_amount)}")
    print(f"max_upload_size: {human(report.max_upload_size)}")
    print(f"root folder:     {report.root_folder}")
    print("ok: boxd can reach Box with these settings")


def import_token(settings: Settings, source: str) -> Path:
    """Validate a token blob from ``source`` (a path or ``-`` for stdin) and store it; return the store path."""
    if source == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        try:
            text, name = Path(source).read_text(), source
        except OSError as exc:
            raise BoxdError(f"cannot read {source}: {exc.strerror}") from None
    blob = TokenBlob.from_json(text, require_refresh=True, source=name)
    path = settings.daemon.state_dir / TOKEN_FILE
    try:
        write_token_file(path, blob)
    except OSError as exc:
        raise BoxdError(f"cannot write {path}: {exc.strerror} (run as root or the boxd user)") from None
    return path
