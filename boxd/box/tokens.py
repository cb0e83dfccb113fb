"""Tokens at rest and on the wire: rclone's token blob, its file store, and Box's token endpoint.

A blob looks like (``box-api-contract.md`` §3.4)::

    {"access_token":"…","token_type":"bearer","refresh_token":"…",
     "expiry":"2017-07-23T12:22:29.259137901+01:00","expires_in":3599}

``expiry`` is Go's ``time.Time`` JSON: RFC 3339 with up to nine fraction digits and either
``Z`` or a numeric offset; ``expires_in`` appears only with newer Go oauth2. :class:`TokenBlob`
reads both forms and writes back the form it read. The store (``state_dir/token.json``) is the
only copy of the newest refresh token, which Box lets be used once: it is replaced atomically
(temp file, fsync, rename, fsync of the directory) with mode 0600, and a running daemon notices
when ``boxd token import`` replaced it.

:class:`TokenEndpoint` posts grants to ``POST /oauth2/token`` (contract §3) and is the boundary
where aiohttp failures become :class:`TransientError`; :func:`parse_token_response` is its pure
half. Token values never appear in reprs or error messages. What to do with tokens (when to
refresh, whom to tell) is :mod:`boxd.box.auth`'s business.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import anyio.to_thread
import structlog

from boxd.accounting import Stats
from boxd.errors import AuthNeedsHumanError, ConfigError, ProtocolError, RateLimitedError, TransientError

log = structlog.get_logger("boxd.auth")

TOKEN_FILE = "token.json"
_NS = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Go's zero ``time.Time`` ("0001-01-01T00:00:00Z"), which oauth2 writes for "no expiry".
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_GO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
#: Box's access-token lifetime, assumed when an answer lacks ``expires_in``.
DEFAULT_EXPIRES_IN = 3600.0
#: Grant form fields whose values are secret.
_SECRET_FIELDS = ("client_secret", "refresh_token", "assertion")
# What `rclone authorize` prints around the blob; `boxd token import` accepts the whole output.
_RCLONE_START, _RCLONE_END = "--->", "<---End paste"


class TokenBlobError(ConfigError):
    """The token blob is not usable; the message names what is wrong, never a token value."""


def parse_go_time(text: str) -> tuple[int, int | None]:
    """``(unix nanoseconds, offset seconds or None for "Z")`` of a Go RFC 3339 timestamp.

    Raises ``ValueError`` (without the text) for anything else.
    """
    m = _GO_TIME.fullmatch(text)
    if m is None:
        raise ValueError("not an RFC 3339 timestamp")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    nanos = int((m.group(7) or "").ljust(9, "0"))
    offset: int | None = None
    if m.group(8) is None:
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise ValueError("offset out of range")
        offset = (off_h * 3600 + off_m * 60) * (-1 if m.group(9) == "-" else 1)
    tz = UTC if offset is None else timezone(timedelta(seconds=offset))
    try:
        delta = datetime(year, month, day, hour, minute, second, tzinfo=tz) - _EPOCH
    except (ValueError, OverflowError):
        raise ValueError("date or time out of range") from None
    return (delta.days * 86400 + delta.seconds) * _NS + nanos, offset


def format_go_time(unix_ns: int, offset: int | None) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339, trailing fraction zeros dropped); ``None`` offset writes ``Z``."""
    seconds, nanos = divmod(unix_ns, _NS)
    tz = UTC if offset is None else timezone(timedelta(seconds=offset))
    dt = (_EPOCH + timedelta(seconds=seconds)).astimezone(tz)
    text = f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    if offset is None:
        return text + "Z"
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    return f"{text}{sign}{hours:02d}:{rest // 60:02d}"


_GO_ZERO_NS = parse_go_time(GO_ZERO_TIME)[0]


@dataclass(frozen=True, repr=False)
class TokenBlob:
    """One OAuth token in rclone's form; ``expiry_ns`` None means no (or an unknown) expiry.

    ``expiry_offset`` is the UTC offset the expiry was written with (None: ``Z``), kept so the
    blob is written back in the form it was read. ``extra`` holds unknown keys, kept as read.
    """

    access_token: str
    refresh_token: str = ""
    token_type: str = "bearer"
    expiry_ns: int | None = None
    expiry_offset: int | None = None
    expires_in: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"TokenBlob(token_type={self.token_type!r}, expiry={self.expiry_text!r}, "
            f"has_access_token={bool(self.access_token)}, has_refresh_token={bool(self.refresh_token)})"
        )

    __str__ = __repr__

    @property
    def expires_at(self) -> float | None:
        """Unix seconds at which the access token expires, or None when unknown."""
        return None if self.expiry_ns is None else self.expiry_ns / _NS

    @property
    def expiry_text(self) -> str:
        """``expiry`` as written to JSON."""
        return GO_ZERO_TIME if self.expiry_ns is None else format_go_time(self.expiry_ns, self.expiry_offset)

    @classmethod
    def from_json(cls, text: str | bytes, *, require_refresh: bool = False, source: str = "token") -> TokenBlob:
        """Parse a blob (or the whole output of ``rclone authorize``); :class:`TokenBlobError` names the problem.

        ``source`` names the input in messages (``box.token``, a file path, ``stdin``).
        ``require_refresh`` rejects blobs without a refresh token (what ``boxd token import`` needs).
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError:
                raise TokenBlobError(f"{source}: not UTF-8 text") from None
        start, end = text.find(_RCLONE_START), text.find(_RCLONE_END)
        if 0 <= start < end:
            text = text[start + len(_RCLONE_START) : end]
        if not text.strip():
            raise TokenBlobError(f"{source}: empty; expected the JSON token printed by rclone authorize")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            # ``from None``: the decode error keeps the whole document, tokens included.
            where = f"line {exc.lineno} column {exc.colno}"
            raise TokenBlobError(f"{source}: not valid JSON ({exc.msg} at {where})") from None
        return cls.from_mapping(obj, require_refresh=require_refresh, source=source)

    @classmethod
    def from_mapping(cls, obj: object, *, require_refresh: bool = False, source: str = "token") -> TokenBlob:
        """Validate a decoded blob; see :meth:`from_json`."""
        if not isinstance(obj, dict):
            raise TokenBlobError(f"{source}: expected a JSON object with access_token, refresh_token and expiry")

        def text_field(name: str) -> str:
            value = obj.get(name, "")
            if value is None:
                return ""
            if not isinstance(value, str):
                raise TokenBlobError(f"{source}: {name!r} must be a string")
            return value

        access, refresh, token_type = text_field("access_token"), text_field("refresh_token"), text_field("token_type")
        if not access and not refresh:
            raise TokenBlobError(f"{source}: neither 'access_token' nor 'refresh_token' is set")
        if require_refresh and not refresh:
            raise TokenBlobError(
                f"{source}: 'refresh_token' is missing or empty; boxd needs the token of an OAuth login "
                '(rclone authorize "box")'
            )
        if token_type.lower() not in ("", "bearer"):
            raise TokenBlobError(f"{source}: 'token_type' must be 'bearer'")
        expiry_ns = offset = None
        expiry = text_field("expiry")
        if expiry:
            try:
                expiry_ns, offset = parse_go_time(expiry)
            except ValueError:
                raise TokenBlobError(
                    f"{source}: 'expiry' is not an RFC 3339 timestamp (like 2017-07-23T12:22:29.259137901+01:00)"
                ) from None
            if expiry_ns == _GO_ZERO_NS:
                expiry_ns = offset = None
        expires_in = obj.get("expires_in")
        if expires_in is not None and (isinstance(expires_in, bool) or not isinstance(expires_in, int)):
            raise TokenBlobError(f"{source}: 'expires_in' must be a whole number of seconds")
        known = ("access_token", "refresh_token", "token_type", "expiry", "expires_in")
        return cls(
            access_token=access,
            refresh_token=refresh,
            token_type=token_type or "bearer",
            expiry_ns=expiry_ns,
            expiry_offset=offset,
            expires_in=expires_in,
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        """The blob as Go's oauth2 marshals it (field order included)."""
        out: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "refresh_token": self.refresh_token,
            "expiry": self.expiry_text,
        }
        if self.expires_in is not None:
            out["expires_in"] = self.expires_in
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        """Compact JSON, as in ``rclone.conf``."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def rotated(self, access_token: str, refresh_token: str | None, expires_in: float, now: float) -> TokenBlob:
        """The blob after a refresh: new tokens, expiry ``now + expires_in`` written in this blob's form.

        Box always sends a new refresh token; if one is missing the old one stays (as Go's oauth2 does).
        """
        return replace(
            self,
            access_token=access_token,
            refresh_token=refresh_token or self.refresh_token,
            expiry_ns=round((now + expires_in) * _NS),
            expires_in=None if self.expires_in is None else round(expires_in),
            extra={},
        )


# -- the store -------------------------------------------------------------------------------

Fingerprint = tuple[int, int, int, int]
"""``(st_dev, st_ino, st_mtime_ns, st_size)``: changes whenever the file is replaced or rewritten."""


def _fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def read_token_file(path: Path) -> tuple[TokenBlob, Fingerprint] | None:
    """Read the store (blocking); None when it does not exist. Unreadable or invalid: :class:`TokenBlobError`."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenBlobError(f"cannot read token store {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        log.warning("token_store_permissions", path=str(path), mode=oct(st.st_mode & 0o777), expected="0o600")
    return TokenBlob.from_json(data, source=f"token store {path}"), _fingerprint(st)


def write_token_file(path: Path, blob: TokenBlob) -> Fingerprint:
    """Replace ``path`` with ``blob`` atomically (blocking): temp file, fsync, rename, fsync the directory.

    The file is mode 0600. Run as root (``boxd token import``), it is given to the owner of the
    directory so the daemon's user can read it. Raises ``OSError``; the temp file never stays behind.
    """
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            if os.geteuid() == 0:
                dir_st = os.stat(directory)
                if dir_st.st_uid != 0:
                    os.fchown(fd, dir_st.st_uid, dir_st.st_gid)
            data = (blob.to_json() + "\n").encode()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a crash
    finally:
        os.close(dir_fd)
    return _fingerprint(os.stat(path))


class TokenStoreWriteError(TransientError):
    """The token store cannot be written (permissions, disk full); try again once that is fixed."""


class TokenStore(Protocol):
    """Where the newest OAuth token lives between runs."""

    async def load(self) -> TokenBlob | None:
        """The stored blob, or None when there is none."""
        ...

    async def save(self, blob: TokenBlob) -> None:
        """Store ``blob`` durably; when this returns, a crash cannot lose it."""
        ...

    async def reload_if_changed(self) -> TokenBlob | None:
        """The stored blob if someone else replaced it since the last load/save, else None."""
        ...


class FileTokenStore:
    """:class:`TokenStore` in one JSON file (``state_dir/token.json``); all file I/O runs in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: Fingerprint | None = None

    def __repr__(self) -> str:
        return f"FileTokenStore({str(self.path)!r})"

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> FileTokenStore:
        return cls(state_dir / TOKEN_FILE)

    async def load(self) -> TokenBlob | None:
        found = await anyio.to_thread.run_sync(read_token_file, self.path)
        if found is None:
            self._seen = None
            return None
        blob, self._seen = found
        return blob

    async def save(self, blob: TokenBlob) -> None:
        try:
            self._seen = await anyio.to_thread.run_sync(write_token_file, self.path, blob)
        except OSError as exc:
            raise TokenStoreWriteError(f"cannot write token store {self.path}: {exc.strerror or exc}") from None

    async def reload_if_changed(self) -> TokenBlob | None:
        try:
            st = await anyio.to_thread.run_sync(os.stat, self.path)
        except FileNotFoundError:
            return None  # keep what we hold; the next save writes it again
        except OSError as exc:
            log.warning("token_store_unreadable", path=str(self.path), error=exc.strerror)
            return None
        if _fingerprint(st) == self._seen:
            return None
        try:
            found = await anyio.to_thread.run_sync(read_token_file, self.path)
        except TokenBlobError as exc:
            # Half-written by a non-atomic writer, or garbage: remember it so we warn once; a
            # later rewrite changes the fingerprint and is read again.
            self._seen = _fingerprint(st)
            log.warning("token_store_invalid", path=str(self.path), error=str(exc))
            return None
        if found is None:
            return None
        blob, self._seen = found
        log.info("token_store_reloaded", path=str(self.path))
        return blob


# -- the token endpoint ----------------------------------------------------------------------


class GrantRejectedError(AuthNeedsHumanError):
    """Box's token endpoint refused the grant (OAuth2 ``error``: invalid_grant, invalid_client, ...)."""

    def __init__(self, error: str, description: str = "", *, status: int = 400) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status  # 0: refused locally (no usable token), Box was not asked


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A successful token answer (``components.schemas.AccessToken``)."""

    access_token: str
    expires_in: float
    refresh_token: str | None = None
    token_type: str = "bearer"

    def __repr__(self) -> str:
        return f"TokenResponse(expires_in={self.expires_in}, has_refresh_token={self.refresh_token is not None})"

    __str__ = __repr__


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _redact(text: str, secret_values: Iterable[str]) -> str:
    for value in secret_values:
        if value:
            text = text.replace(value, "<redacted>")
    return text[:300]


def parse_token_response(
    status: int, headers: Mapping[str, str], body: bytes, *, redact: Iterable[str] = ()
) -> TokenResponse:
    """Interpret a token-endpoint answer (no I/O).

    200 → :class:`TokenResponse`; 429 → :class:`RateLimitedError`; 5xx, 408 and
    ``temporarily_unavailable`` → :class:`TransientError` (both with ``retry_after``); an OAuth2
    error body → :class:`GrantRejectedError`; anything else → :class:`ProtocolError`. ``redact``
    are values (sent secrets) that must not appear in messages even if Box echoed them.
    """
    try:
        obj: Any = json.loads(body) if body else None
    except ValueError:
        obj = None
    if status == 200:
        if not isinstance(obj, dict):
            raise ProtocolError("the token endpoint answered 200 without a JSON object")
        access, expires_in, refresh = obj.get("access_token"), obj.get("expires_in"), obj.get("refresh_token")
        if not isinstance(access, str) or not access:
            raise ProtocolError("the token endpoint answered 200 without an access_token")
        if expires_in is None:
            expires_in = DEFAULT_EXPIRES_IN
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
            raise ProtocolError("the token endpoint answered an invalid expires_in")
        if refresh is not None and not isinstance(refresh, str):
            raise ProtocolError("the token endpoint answered an invalid refresh_token")
        token_type = obj.get("token_type") or "bearer"
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise ProtocolError("the token endpoint answered a token_type other than bearer")
        return TokenResponse(access, float(expires_in), refresh or None, token_type)
    error = obj.get("error") if isinstance(obj, dict) else None
    description = obj.get("error_description") if isinstance(obj, dict) else None
    error = _redact(error, redact) if isinstance(error, str) else ""
    description = _redact(description, redact) if isinstance(description, str) else ""
    detail = f" ({error}: {description})" if error else ""
    retry_after = _retry_after(headers.get("Retry-After"))
    if status == 429:
        raise RateLimitedError(f"the token endpoint is rate-limiting (429){detail}", retry_after=retry_after)
    if status >= 500 or status == 408 or error == "temporarily_unavailable":
        raise TransientError(f"the token endpoint failed ({status}){detail}", retry_after=retry_after)
    if error:
        raise GrantRejectedError(error, description, status=status)
    raise ProtocolError(f"the token endpoint answered {status} without an OAuth2 error (check box.token_url)")


class GrantEndpoint(Protocol):
    """Something that runs an OAuth2 grant: the real :class:`TokenEndpoint`, or a fake in tests."""

    async def grant(self, form: Mapping[str, str]) -> TokenResponse: ...


class TokenEndpoint:
    """Box's ``POST /oauth2/token`` over aiohttp; the boundary where network failures become TransientError."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, *, timeout: float = 30.0, stats: Stats | None = None
    ) -> None:
        self.url = url
        self._http = http
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._stats = stats

    def __repr__(self) -> str:
        return f"TokenEndpoint({self.url!r})"

    async def grant(self, form: Mapping[str, str]) -> TokenResponse:
        """Post ``form`` (form-encoded) and interpret the answer with :func:`parse_token_response`."""
        started = time.monotonic()
        try:
            async with self._http.post(
                self.url, data=dict(form), timeout=self._timeout, headers={"Accept": "application/json"}
            ) as resp:
                status, headers, body = resp.status, resp.headers, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._record("error", started)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise TransientError(f"cannot reach the token endpoint {self.url}: {reason}") from exc
        self._record(status, started)
        return parse_token_response(status, headers, body, redact=(form.get(k, "") for k in _SECRET_FIELDS))

    def _record(self, status: int | str, started: float) -> None:
        if self._stats is not None:
            self._stats.request("token", status, time.monotonic() - started)
