"""The process-wide pacer every Box request passes through.

Box allows about 1,000 API calls and 240 uploads a minute per user and answers 429 +
``Retry-After`` beyond that (box-api-contract.md §2.3). boxd paces itself *below* those
limits instead of colliding with them (DESIGN §4 "Rate limits"):

- two per-minute budgets, ``api`` and ``upload``, each a rate with a small burst, run at
  ``share`` (95 %) of the configured limit; an upload spends from both, as Box counts it;
- :meth:`Pacer.pause` holds *every* caller after a 429, not only the one that got it;
- callers are admitted first come, first served, and a caller cancelled while waiting
  spends nothing.

The clock and the sleep are injected (anyio's by default), so tests run on simulated time.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Literal

import anyio

from boxd.box.retry import MAX_RETRY_AFTER

if TYPE_CHECKING:
    from boxd.accounting import Stats
    from boxd.settings import BoxSettings

Kind = Literal["api", "upload"]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Share of Box's limits boxd uses: the rest is slack for clock skew and Box's own counting.
DEFAULT_SHARE = 0.95
#: Requests that may leave at once after a quiet spell; small, so a burst never runs into a
#: limit that is enforced smoothly (the emulator's ``--rate-burst``).
DEFAULT_BURST = 5

# A wait this short is float rounding, not a real wait; sleeping it again could loop forever
# on a clock too coarse to move by that much.
_EPSILON = 1e-6


class Budget:
    """One per-minute budget: a token bucket in its GCRA form (pure; the time is passed in).

    At most ``burst`` requests pass at once, then one every ``window / (per_minute · share)``
    seconds. ``burst`` is lowered to the slack the share leaves (``per_minute · (1 - share)``,
    at least 1), so that even a full burst plus a window of steady pacing never exceeds
    ``per_minute`` within any ``window`` seconds.
    """

    def __init__(
        self, per_minute: int, *, share: float = DEFAULT_SHARE, burst: int = DEFAULT_BURST, window: float = 60.0
    ) -> None:
        if per_minute < 1:
            raise ValueError(f"per_minute must be at least 1, got {per_minute}")
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if not 0 < window < math.inf:
            raise ValueError(f"window must be a positive number of seconds, got {window}")
        self.per_minute = per_minute
        # The 1e-9 keeps 240 · 0.05 = 11.999… from losing a request to float rounding.
        self.burst = max(1, min(burst, math.floor(per_minute * (1 - share) + 1e-9)))
        self.interval = window / (per_minute * share)
        # The "theoretical arrival time" of the next request: the budget is exhausted up to it.
        self._tat = -math.inf
        self._tolerance = (self.burst - 1) * self.interval

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until one request may pass (0 if it may pass now)."""
        return max(0.0, self._tat - self._tolerance - now)

    def drain(self, at: float) -> None:
        """Spend the burst: from ``at`` on, requests pass one ``interval`` apart, none at once.

        After a 429 pause the waiting callers would otherwise all leave together and meet Box's
        limit again (a strict server has no burst at all).
        """
        self._tat = max(self._tat, at + self._tolerance)

    def take(self, now: float) -> None:
        """Spend one request at ``now``; the caller checked :meth:`delay` first."""
        self._tat = max(self._tat, now) + self.interval


class Pacer:
    """Admits Box requests at a pace below Box's limits; shared by the whole process.

    ``await acquire(kind)`` (or ``async with slot(kind)``) returns when the request may be
    sent: after any pause has ended and once its budgets allow it. Callers of one kind are
    admitted in arrival order (anyio's locks hand over first in, first out), and an upload,
    once its upload budget allows it, queues with the API callers for the API budget. A
    caller cancelled while waiting leaves both budgets untouched: spending happens in one
    step after the last wait, with no checkpoint in between.
    """

    def __init__(
        self,
        api_per_minute: int = 1000,
        uploads_per_minute: int = 240,
        *,
        share: float = DEFAULT_SHARE,
        burst: int = DEFAULT_BURST,
        window: float = 60.0,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        stats: Stats | None = None,
    ) -> None:
        self._clock: Clock = clock or anyio.current_time
        self._sleep: Sleep = sleep or anyio.sleep
        self._stats = stats
        self.api = Budget(api_per_minute, share=share, burst=burst, window=window)
        self.uploads = Budget(uploads_per_minute, share=share, burst=burst, window=window)
        self._api_lock = anyio.Lock()
        self._upload_lock = anyio.Lock()
        self._paused_until = -math.inf
        self._waiting = 0

    @classmethod
    def from_settings(
        cls, box: BoxSettings, *, clock: Clock | None = None, sleep: Sleep | None = None, stats: Stats | None = None
    ) -> Pacer:
        """A pacer for ``[box] api_calls_per_minute`` and ``uploads_per_minute``."""
        return cls(box.api_calls_per_minute, box.uploads_per_minute, clock=clock, sleep=sleep, stats=stats)

    @property
    def paused_until(self) -> float | None:
        """When the current pause ends, on the pacer's clock; ``None`` if no pause is in force."""
        return self._paused_until if self._paused_until > self._clock() else None

    @property
    def waiting(self) -> int:
        """Callers inside :meth:`acquire` that have not been admitted yet."""
        return self._waiting

    def pause(self, seconds: float) -> None:
        """Hold every caller until ``seconds`` from now (Box answered 429 + ``Retry-After``).

        A pause only ever extends the one in force, never shortens it, and lasts at most
        :data:`~boxd.box.retry.MAX_RETRY_AFTER`. Each call counts one rate-limit hit in the
        stats, so the caller must not count it again.
        """
        if not 0 <= seconds < math.inf:
            raise ValueError(f"pause needs a finite, non-negative number of seconds, got {seconds}")
        if self._stats is not None:
            self._stats.rate_limit_hit()
        self._paused_until = max(self._paused_until, self._clock() + min(seconds, MAX_RETRY_AFTER))
        for budget in (self.api, self.uploads):
            budget.drain(self._paused_until)

    async def acquire(self, kind: Kind) -> None:
        """Wait until a request of ``kind`` (``"api"`` or ``"upload"``) may be sent, and spend it."""
        # Lock order is always upload, then API, so callers of the two kinds cannot deadlock.
        if kind == "upload":
            stages: Sequence[tuple[anyio.Lock, Budget]] = (
                (self._upload_lock, self.uploads),
                (self._api_lock, self.api),
            )
        elif kind == "api":
            stages = ((self._api_lock, self.api),)
        else:
            raise ValueError(f"kind must be 'api' or 'upload', got {kind!r}")
        self._waiting += 1
        try:
            async with AsyncExitStack() as held:
                budgets: list[Budget] = []
                now = 0.0
                for lock, budget in stages:
                    await held.enter_async_context(lock)
                    budgets.append(budget)
                    # While we hold a budget's lock nobody else spends from it, so a budget
                    # found ready here stays ready through the later stages.
                    now = await self._ready(budgets)
                for budget in budgets:
                    budget.take(now)
        finally:
            self._waiting -= 1

    @asynccontextmanager
    async def slot(self, kind: Kind) -> AsyncIterator[None]:
        """``async with pacer.slot(kind):`` send one request; the budget is spent on entry.

        Leaving gives nothing back: Box counts requests started, not requests in flight.
        """
        await self.acquire(kind)
        yield

    async def _ready(self, budgets: Sequence[Budget]) -> float:
        """Sleep until no pause is in force and every budget allows one request; return the time.

        Re-checks after every sleep, because a 429 elsewhere may have extended the pause.
        """
        while True:
            now = self._clock()
            delay = max(self._paused_until - now, *(b.delay(now) for b in budgets))
            if delay <= _EPSILON:
                return now
            await self._sleep(delay)
