"""The pacer on simulated time: budgets, pauses, fairness and cancellation.

Two fake clocks stand in for anyio's: :class:`JumpClock` lets time leap forward whenever a
caller sleeps (a simulated minute in no real time), :class:`ManualClock` moves only when a test
says so, to look at the waiters in between. Nothing here sleeps for real.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

from boxd.accounting import Stats
from boxd.box.pacing import Budget, Kind, Pacer
from boxd.box.retry import MAX_RETRY_AFTER


class JumpClock:
    """Sleeping moves time forward at once by the amount slept."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await anyio.lowlevel.checkpoint()


class _Sleeper:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.woken = anyio.Event()


class ManualClock:
    """Time moves only through :meth:`advance`, which wakes the sleepers whose time has come."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[_Sleeper] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        sleeper = _Sleeper(self.now + seconds)
        self.sleepers.append(sleeper)
        try:
            await sleeper.woken.wait()
        finally:
            if sleeper in self.sleepers:
                self.sleepers.remove(sleeper)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for sleeper in [s for s in self.sleepers if s.deadline <= self.now]:
            self.sleepers.remove(sleeper)
            sleeper.woken.set()


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run, checkpoint by checkpoint, until ``condition`` holds."""
    for _ in range(10_000):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("the condition never held")


async def until_waiting(pacer: Pacer, count: int) -> None:
    """Let the other tasks run until ``count`` callers wait inside the pacer."""
    await until(lambda: pacer.waiting == count)


def most_in_any_window(times: list[float], window: float = 60.0) -> int:
    """The largest number of ``times`` inside any window ``[t, t + window)``.

    The window is shortened by a microsecond: float rounding (and the pacer's tolerance for it)
    may admit a request that much early, which no server's minute can tell apart.
    """
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window + 1e-6:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- Budget (pure) -------------------------------------------------------------------------


def test_a_budget_lets_its_burst_pass_at_once_then_one_request_per_interval() -> None:
    budget = Budget(120, share=0.5, burst=3, window=60.0)
    assert budget.burst == 3 and budget.interval == 1.0
    for _ in range(3):
        assert budget.delay(0.0) == 0.0
        budget.take(0.0)
    assert budget.delay(0.0) == pytest.approx(1.0)
    assert budget.delay(0.4) == pytest.approx(0.6)
    budget.take(1.0)
    assert budget.delay(1.0) == pytest.approx(1.0)


def test_the_burst_is_lowered_to_the_slack_the_share_leaves() -> None:
    assert Budget(240, share=0.95, burst=5).burst == 5
    assert Budget(30, share=0.95, burst=5).burst == 1  # 1.5 requests of slack: no room for a burst
    assert Budget(60, share=1.0, burst=5).burst == 1  # no slack at all
    assert Budget(1000, share=0.95, burst=100).burst < 51


@given(
    per_minute=st.integers(min_value=1, max_value=2_000),
    share=st.floats(min_value=0.5, max_value=1.0),
    burst=st.integers(min_value=1, max_value=50),
)
def test_a_greedy_caller_never_gets_more_than_the_limit_in_any_minute(per_minute, share, burst) -> None:
    budget, now = Budget(per_minute, share=share, burst=burst), 0.0
    granted: list[float] = []
    while now < 180.0 and len(granted) < 4 * per_minute:
        now += budget.delay(now)
        budget.take(now)
        granted.append(now)
    assert most_in_any_window(granted) <= per_minute


@pytest.mark.parametrize(
    "kwargs",
    [
        {"per_minute": 0},
        {"per_minute": 10, "share": 0.0},
        {"per_minute": 10, "share": 1.5},
        {"per_minute": 10, "burst": 0},
    ],
)
def test_nonsensical_budgets_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        Budget(**kwargs)


# --- Pacer: budgets ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_lone_caller_is_paced_at_95_percent_of_the_limit() -> None:
    clock = JumpClock()
    pacer = Pacer(1000, 240, clock=clock, sleep=clock.sleep)
    granted: list[float] = []
    while clock.now < 60.0:
        await pacer.acquire("upload")
        granted.append(clock.now)
    in_first_minute = sum(1 for t in granted if t < 60.0)
    assert 0.95 * 240 - 1 <= in_first_minute <= 240


@pytest.mark.anyio
async def test_concurrent_callers_over_simulated_minutes_never_exceed_either_budget() -> None:
    clock = JumpClock()
    pacer = Pacer(1000, 240, clock=clock, sleep=clock.sleep)
    api_calls: list[float] = []  # Box counts uploads as API calls too
    uploads: list[float] = []

    async def caller(kind: Kind) -> None:
        while clock.now < 180.0:
            await pacer.acquire(kind)
            api_calls.append(clock.now)
            if kind == "upload":
                uploads.append(clock.now)

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(caller, "upload" if i % 3 else "api")

    assert most_in_any_window(api_calls) <= 1000
    assert most_in_any_window(uploads) <= 240
    assert len(uploads) > 240  # the run really pushed against the upload budget


@pytest.mark.anyio
async def test_an_upload_spends_from_both_budgets() -> None:
    clock = ManualClock()
    pacer = Pacer(60, 600, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    await pacer.acquire("upload")
    done = anyio.Event()

    async def api_call() -> None:
        await pacer.acquire("api")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(api_call)
        await until(lambda: len(clock.sleepers) == 1)
        assert not done.is_set()  # the upload spent the only API token
        clock.advance(1.0)
    assert done.is_set()


@pytest.mark.anyio
async def test_waiters_for_a_token_are_admitted_in_arrival_order() -> None:
    clock = ManualClock()
    pacer = Pacer(60, 60, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    await pacer.acquire("api")
    admitted: list[tuple[int, float]] = []

    async def waiter(n: int) -> None:
        await pacer.acquire("api")
        admitted.append((n, clock.now))

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(waiter, n)
            await until_waiting(pacer, n + 1)
        for _ in range(5):
            await until(lambda: len(clock.sleepers) == 1)
            clock.advance(1.0)
    assert admitted == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (4, 5.0)]


# --- Pacer: pauses -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_pause_holds_every_waiter_until_it_ends_then_they_go_in_order() -> None:
    clock = ManualClock()
    pacer = Pacer(6000, 6000, burst=10, clock=clock, sleep=clock.sleep)
    admitted: list[tuple[str, float]] = []

    async def waiter(name: str, kind: Kind) -> None:
        await pacer.acquire(kind)
        admitted.append((name, clock.now))

    pacer.pause(30.0)
    assert pacer.paused_until == 30.0
    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(waiter, f"api{n}", "api")
            await until_waiting(pacer, n + 1)
        tg.start_soon(waiter, "upload", "upload")
        await until(lambda: pacer.waiting == 5 and len(clock.sleepers) == 2)
        clock.advance(29.5)
        for _ in range(100):
            await anyio.lowlevel.checkpoint()
        assert admitted == []
        assert pacer.waiting == 5
        clock.advance(0.5)
        # The pause spent the burst: after it, callers leave one interval apart, not all at once
        # (they would meet Box's limit again together).
        for _ in range(50):
            for _ in range(100):  # let every woken caller take its turn before time moves on
                await anyio.lowlevel.checkpoint()
            if len(admitted) == 5:
                break
            clock.advance(pacer.api.interval)
    assert [name for name, _ in admitted if name.startswith("api")] == ["api0", "api1", "api2", "api3"]
    assert sorted(name for name, _ in admitted) == ["api0", "api1", "api2", "api3", "upload"]
    times = [when for _, when in admitted]
    assert times[0] == 30.0 and all(b > a for a, b in itertools.pairwise(times)), admitted
    assert pacer.paused_until is None


def test_a_pause_is_extended_but_never_shortened() -> None:
    clock = ManualClock()
    pacer = Pacer(clock=clock)
    pacer.pause(30.0)
    pacer.pause(10.0)
    assert pacer.paused_until == 30.0
    clock.advance(5.0)
    pacer.pause(60.0)
    assert pacer.paused_until == 65.0


def test_a_pause_lasts_at_most_fifteen_minutes_and_counts_a_rate_limit_hit() -> None:
    stats = Stats()
    pacer = Pacer(clock=ManualClock(), stats=stats)
    pacer.pause(86_400.0)
    pacer.pause(1.0)
    assert pacer.paused_until == MAX_RETRY_AFTER
    assert stats.rate_limited == 2


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_pause_of_nonsense_length_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        Pacer(clock=ManualClock()).pause(bad)


@pytest.mark.anyio
async def test_a_pause_that_starts_while_a_caller_waits_for_a_token_holds_it_too() -> None:
    clock = ManualClock()
    pacer = Pacer(60, 60, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    await pacer.acquire("api")
    admitted: list[float] = []

    async def waiter() -> None:
        await pacer.acquire("api")
        admitted.append(clock.now)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await until(lambda: len(clock.sleepers) == 1)  # waiting one second for a token
        pacer.pause(10.0)
        clock.advance(1.0)
        await until(lambda: len(clock.sleepers) == 1 and clock.sleepers[0].deadline == 10.0)
        assert admitted == []
        clock.advance(9.0)
    assert admitted == [10.0]


# --- Pacer: cancellation -------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_spend_a_token() -> None:
    clock = ManualClock()
    pacer = Pacer(60, 60, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    await pacer.acquire("api")
    admitted: list[tuple[str, float]] = []

    async def waiter(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await pacer.acquire("api")
            admitted.append((name, clock.now))

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "cancelled", first)
        await until(lambda: len(clock.sleepers) == 1)  # holds the lock, sleeping for a token
        tg.start_soon(waiter, "next", second)
        await until(lambda: pacer.waiting == 2)
        first.cancel()
        await until(lambda: pacer.waiting == 1 and len(clock.sleepers) == 1)
        clock.advance(1.0)
    # "next" got the token the cancelled waiter did not take, at 1 s and not at 2 s.
    assert admitted == [("next", 1.0)]
    assert pacer.api.delay(clock.now) == pytest.approx(1.0)


@pytest.mark.anyio
async def test_an_upload_cancelled_while_queued_for_the_api_budget_spends_neither() -> None:
    clock = ManualClock()
    pacer = Pacer(60, 60, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    await pacer.acquire("api")  # the API budget is empty for one second; uploads are full
    scope = anyio.CancelScope()

    async def upload() -> None:
        with scope:
            await pacer.acquire("upload")

    async with anyio.create_task_group() as tg:
        tg.start_soon(upload)
        await until(lambda: len(clock.sleepers) == 1)  # past the upload budget, waiting for the API one
        scope.cancel()
    assert pacer.waiting == 0
    assert pacer.uploads.delay(clock.now) == 0.0
    clock.advance(1.0)
    await pacer.acquire("upload")  # no wait: nothing was spent by the cancelled one
    assert clock.now == 1.0


# --- Pacer: the rest -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_slot_admits_like_acquire_and_gives_nothing_back() -> None:
    clock = JumpClock()
    pacer = Pacer(60, 60, share=1.0, burst=1, clock=clock, sleep=clock.sleep)
    async with pacer.slot("api"):
        assert clock.now == 0.0
    async with pacer.slot("api"):
        assert clock.now == 1.0


@pytest.mark.anyio
async def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        await Pacer(clock=ManualClock()).acquire("download")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_by_default_it_runs_on_anyios_clock() -> None:
    pacer = Pacer()
    await pacer.acquire("upload")
    await pacer.acquire("api")
    assert pacer.waiting == 0 and pacer.paused_until is None
