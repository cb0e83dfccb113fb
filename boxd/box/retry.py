"""Which Box answers are worth trying again, and how long to wait first (pure, no I/O).

This module is the one place that knows Box's retryable answers (box-api-contract.md §2;
rclone's ``shouldRetry`` and ``lib/pacer`` are the model):

- :func:`classify` turns one exchange (status, error code, headers, or the exception that
  ended it) into a :data:`Decision`: :class:`Retry`, :class:`RefreshAuth`, :class:`Fatal`, or
  :class:`Proceed` when the answer is not an error at all.
- :func:`to_error` turns a final Box error answer into the right :mod:`boxd.errors` class.
- :class:`Backoff` is the delay arithmetic: exponential, full jitter, capped, ``Retry-After``
  first. Its random source is passed in, so tests are plain arithmetic.

Callers own the loop: they count attempts, refresh the token at most once per request on
:class:`RefreshAuth`, pause the shared pacer on ``rate_limited``, and sleep.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import aiohttp

from boxd.errors import (
    AuthNeedsHumanError,
    BoxdError,
    BoxRequestError,
    BoxServerError,
    NameConflictError,
    RateLimitedError,
    TransientError,
)

#: The longest wait a ``Retry-After`` may impose; a bigger value is a misbehaving server or
#: proxy, and a backup host would rather try again in 15 minutes than stall for a day.
MAX_RETRY_AFTER = 15 * 60.0

#: Statuses that say "not now" rather than "no". 509 is the bandwidth limit some proxies and
#: Box's CDN answer (rclone retries it too); 501/505 are permanent and not listed.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504, 509})

#: 409 codes that clear up by themselves [docs common-errors.md]: another operation holds the
#: item, or a just-deleted name is still reserved. Every other 409 is a real conflict.
TEMPORARY_CONFLICTS = frozenset({"operation_blocked_temporary", "name_temporarily_reserved"})

# Box's message is echoed into ours; keep a hostile or huge one from flooding logs.
_MAX_BOX_MESSAGE = 300
_SECONDS = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the same request again after ``after`` seconds (``None``: let :class:`Backoff` choose).

    ``reason`` is a stable label for ``boxd_retries_total{reason}``: ``rate_limited``,
    ``server_error``, ``network``, ``operation_blocked_temporary`` or ``name_temporarily_reserved``.
    """

    after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class RefreshAuth:
    """Box rejected the access token (401): refresh it once, then send the request again.

    A second 401 for the same request is final: build the error with :func:`to_error`.
    """


@dataclass(frozen=True, slots=True)
class Fatal:
    """Do not try again.

    With ``status`` set, Box answered: build the error with :func:`to_error` from the body's
    ``message``/``request_id``/``context_info``. Without it, ``error`` ended the exchange and is
    not a network failure (a local disk error, a bug, cancellation): re-raise or map it.
    """

    status: int | None
    code: str | None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Proceed:
    """The answer is not an error (2xx/3xx, 202 included): hand it to the caller."""


Decision = Retry | RefreshAuth | Fatal | Proceed


def classify(
    status: int | None,
    code: str | None,
    headers: Mapping[str, str],
    error: BaseException | None,
    *,
    now: float | None = None,
) -> Decision:
    """Decide what to do about one exchange with Box.

    ``status``/``code``/``headers`` describe Box's answer (``code`` from the JSON error body,
    or ``error`` of a token-endpoint body); ``error`` is the exception that ended the exchange,
    if any. An error status (≥ 400) decides on its own: Box's word beats a body that broke off
    afterwards. Otherwise a network failure (timeout, reset, dropped connection, truncated
    body) is a ``Retry(None, "network")``, any other exception is :class:`Fatal`, and a clean
    answer is :class:`Proceed`. ``now`` (epoch seconds, default the wall clock) dates an
    HTTP-date ``Retry-After``. Raises :class:`ValueError` when given neither status nor error.
    """
    if status is not None and status >= 400:
        return _classify_answer(status, code, headers, now)
    if error is not None:
        return _classify_error(error)
    if status is None:
        raise ValueError("classify needs a status or an error")
    # 202 is the commit's "not yet" and the session machine's business, not an error.
    return Proceed()


def _classify_answer(status: int, code: str | None, headers: Mapping[str, str], now: float | None) -> Decision:
    if status == 401:
        return RefreshAuth()
    if is_retryable(status, code):
        after = parse_retry_after(_header(headers, "Retry-After"), now=now)
        if status == 429:
            return Retry(after, "rate_limited")
        if status == 409 and code is not None:
            return Retry(after, code)
        return Retry(after, "server_error")
    # 400 parts_mismatch is also "try the commit again", but only the session machine knows
    # when that is safe, so it is final here.
    return Fatal(status, code)


def _classify_error(error: BaseException) -> Decision:
    if isinstance(error, TransientError):  # already mapped at a boundary
        if isinstance(error, RateLimitedError):
            return Retry(error.retry_after, "rate_limited")
        if isinstance(error, BoxServerError):
            return Retry(error.retry_after, "server_error")
        return Retry(error.retry_after, "network")
    if is_network_error(error):
        return Retry(None, "network")
    return Fatal(None, None, error)


def is_retryable(status: int, code: str | None) -> bool:
    """True for the Box error answers that may succeed if the same request is sent again."""
    if status == 429 or status in RETRYABLE_STATUSES:
        return True
    return status == 409 and code in TEMPORARY_CONFLICTS


def is_network_error(error: BaseException) -> bool:
    """True for failures of the connection rather than of the request: worth another try.

    Certificate verification failures are excluded: a wrong CA bundle does not fix itself.
    Bare :class:`OSError` is excluded too, because reading the local file raises it as well.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        return False
    return isinstance(error, (TimeoutError, ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` if absent or unreadable.

    Accepts delay-seconds (Box sends integers; decimals are tolerated) and an HTTP-date, which
    is counted from ``now`` (epoch seconds, default the wall clock) and never negative.
    Negative numbers, ``nan``/``inf``, exponents and other garbage give ``None``.
    """
    if value is None:
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # parsedate_to_datetime gives a naive datetime for "-0000"; HTTP-dates are always GMT.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain ``dict``."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def to_error(
    status: int,
    code: str | None,
    message: str | None,
    request_id: str | None,
    context_info: Mapping[str, Any] | None,
    retry_after: float | None,
    *,
    attempts: int | None = None,
) -> BoxdError:
    """The :mod:`boxd.errors` exception for a final Box error answer.

    - 409 ``item_name_in_use`` → :class:`NameConflictError` (``conflict`` holds the existing item);
    - ``invalid_grant`` (token endpoint) → :class:`AuthNeedsHumanError`;
    - 429 → :class:`RateLimitedError`; other retryable answers (:func:`is_retryable`) that ran
      out of attempts → :class:`BoxServerError`;
    - anything else → :class:`BoxRequestError`.

    The message names status, code, Box's message, ``request_id`` and, if given, ``attempts``.
    It never carries headers or tokens: only the fields passed here go in.
    """
    code = code or f"http_{status}"
    text = f"Box answered {status} {code}"
    if message:
        text += f": {_one_line(message)}"
    if request_id:
        text += f" (request_id {_one_line(request_id)})"
    if attempts is not None:
        text += f" after {attempts} attempt{'s' if attempts != 1 else ''}"
    info = dict(context_info) if context_info is not None else None
    if code == "invalid_grant":
        return AuthNeedsHumanError(
            f'{text}; Box no longer accepts the refresh token: run `rclone authorize "box"` and then '
            "`boxd token import` to authorise boxd again"
        )
    if status == 409 and code == "item_name_in_use":
        return NameConflictError(text, status=status, code=code, request_id=request_id, context_info=info)
    if status == 429:
        return RateLimitedError(text, retry_after=retry_after)
    if is_retryable(status, code):
        return BoxServerError(
            text, status=status, code=code, request_id=request_id, context_info=info, retry_after=retry_after
        )
    return BoxRequestError(text, status=status, code=code, request_id=request_id, context_info=info)


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_BOX_MESSAGE else flat[: _MAX_BOX_MESSAGE - 1] + "…"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between attempts of one request: exponential with full jitter, capped.

    ``attempt`` counts the attempts made so far (1 after the first failure). Without a
    ``Retry-After`` the delay is uniform in ``[0, min(cap, base·2^(attempt-1))]`` (full jitter
    spreads retries of many parts failing together); a ``Retry-After`` wins over that, even
    above ``cap``, but never beyond ``max_retry_after``. ``max_attempts`` counts tries, the
    first included (``daemon.max_attempts``).
    """

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int = 5
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap and math.isfinite(self.cap)):
            raise ValueError(f"need 0 < base <= cap < inf, got base={self.base} cap={self.cap}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not (0 <= self.max_retry_after < math.inf):
            raise ValueError(f"max_retry_after must be finite and >= 0, got {self.max_retry_after}")

    def next_delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempt + 1``; ``rng`` is the only source of chance."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            return min(retry_after, self.max_retry_after)
        # min() on the exponent keeps 2**n finite however long a caller keeps going.
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        return rng.uniform(0.0, ceiling)

    def should_give_up(self, attempt: int) -> bool:
        """True once ``attempt`` tries have been made and no more are allowed."""
        return attempt >= self.max_attempts
