"""boxd's one error tree. Every failure a caller must act on is one of these::

    BoxdError
     ├── ConfigError              bad configuration: stop with one line naming the key
     ├── AuthNeedsHumanError      Box refused the grant (invalid_grant): pause, tell the operator
     ├── TransientError           try again later (network, 5xx, 429, timeouts)
     │    ├── RateLimitedError    Box answered 429; ``retry_after`` seconds
     │    └── BoxServerError      Box answered 5xx or a retryable 4xx code
     ├── PermanentError           fail this file or job with the message
     │    ├── BoxRequestError     Box refused the request (4xx); status, code, request_id
     │    │    └── NameConflictError   409 item_name_in_use; ``conflict`` holds the existing item
     │    ├── InvalidNameError    a name Box would refuse; caught before anything is sent
     │    ├── FileChangedError    the local file changed while it was being uploaded
     │    └── LimitExceededError  the file exceeds max_upload_size or the space left
     └── ProtocolError            Box answered something we cannot understand

Foreign exceptions (``aiohttp.ClientError``, ``OSError`` of sockets, ``sqlite3.Error``) are
mapped at the boundary where they arise; they never travel up. Messages never carry secrets.
"""

from __future__ import annotations

from typing import Any


class BoxdError(Exception):
    """boxd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(BoxdError, ValueError):
    """The configuration is invalid."""


class AuthNeedsHumanError(BoxdError):
    """Box no longer accepts boxd's credentials; a human must authorise it again."""


class TransientError(BoxdError):
    """A failure that may go away if the same request is tried again later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """Box rate-limited the request (429)."""


class PermanentError(BoxdError):
    """A failure that trying again will not fix."""


class _BoxAnswer:
    """Fields of a Box error answer (``ClientError``), shared by transient and permanent ones."""

    status: int
    code: str
    request_id: str | None
    context_info: dict[str, Any] | None

    def _set_answer(self, status: int, code: str, request_id: str | None, context_info: dict[str, Any] | None) -> None:
        self.status = status
        self.code = code
        self.request_id = request_id
        self.context_info = context_info


class BoxServerError(TransientError, _BoxAnswer):
    """Box failed to answer the request (5xx or a temporary condition)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: str | None = None,
        context_info: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self._set_answer(status, code, request_id, context_info)


class BoxRequestError(PermanentError, _BoxAnswer):
    """Box refused the request."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: str | None = None,
        context_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self._set_answer(status, code, request_id, context_info)


class NameConflictError(BoxRequestError):
    """An item with that name already exists in the folder."""

    @property
    def conflict(self) -> dict[str, Any] | None:
        """The existing item: Box sends an object for files and a one-element list for folders."""
        conflicts = (self.context_info or {}).get("conflicts")
        if isinstance(conflicts, list):
            conflicts = conflicts[0] if conflicts else None
        return conflicts if isinstance(conflicts, dict) else None


class InvalidNameError(PermanentError):
    """Box does not accept this file or folder name."""


class FileChangedError(PermanentError):
    """The local file changed while it was being uploaded; nothing was committed."""


class LimitExceededError(PermanentError):
    """The file is larger than Box allows for this account, or than the space left."""


class ProtocolError(BoxdError):
    """Box answered in a way boxd does not understand."""


def unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a caller should see from a task group that failed.

    Sibling tasks (parts of one upload, files of one job) can fail together; what matters is
    the most serious boxd error among them: a lost authorisation, then a permanent failure,
    then a transient one. Anything else (a bug, cancellation) is returned as the group itself.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (AuthNeedsHumanError, PermanentError, TransientError, BoxdError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if len(leaves) == 1 else group
