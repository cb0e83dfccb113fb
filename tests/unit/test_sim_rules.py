"""Pure rules of the emulator: names, rate-limit buckets, knobs and part sizes."""

from __future__ import annotations

import pytest

from boxd.sim.config import MIB, Knobs
from boxd.sim.errors import BoxApiError
from boxd.sim.model import check_name
from boxd.sim.ratelimit import RateLimiter, TokenBucket
from boxd.units import parse_duration, parse_size


@pytest.mark.parametrize("name", ["pack", " leading space is fine", "ünïcode.bin", "a" * 255, "-<>:|?*"])
def test_names_box_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("a/b", "item_name_invalid"),
        ("a\\b", "item_name_invalid"),
        (".", "item_name_invalid"),
        ("..", "item_name_invalid"),
        ("x ", "item_name_invalid"),
        ("nul\x00", "item_name_invalid"),
        ("del\x7f", "item_name_invalid"),
        ("a" * 256, "item_name_too_long"),
        ("", "bad_request"),
        (5, "bad_request"),
    ],
)
def test_names_box_refuses(name: object, code: str) -> None:
    with pytest.raises(BoxApiError) as err:
        check_name(name)
    assert err.value.code == code and err.value.status == 400


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=3.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(10.0) == 0.0  # refilled, but never beyond capacity
    assert bucket.tokens == pytest.approx(2.0)


def test_the_limiter_rounds_retry_after_up_and_keeps_users_apart() -> None:
    limiter = RateLimiter()
    assert limiter.check("u1", "api", 240, 60.0, 1, now=0.0) == 0
    assert limiter.check("u1", "api", 240, 60.0, 1, now=0.0) == 1  # 0.25 s rounds up to 1
    assert limiter.check("u2", "api", 240, 60.0, 1, now=0.0) == 0
    assert limiter.check("u1", "upload", 2, 60.0, 1, now=0.0) == 0
    assert limiter.check("u1", "upload", 2, 60.0, 1, now=1.0) == 29
    assert limiter.check("u1", "api", 0, 60.0, 1, now=0.0) == 0  # 0 = unlimited


def test_a_smooth_limit_admits_exactly_its_rate_over_a_window() -> None:
    limiter = RateLimiter()
    admitted = sum(limiter.check("u", "api", 1000, 60.0, 1, now=t / 1000) == 0 for t in range(60_000))
    assert admitted == 1000


def test_knob_updates_are_validated_and_leave_the_original_alone() -> None:
    knobs = Knobs()
    new = knobs.updated({"latency_ms": 5, "rate_429": 0.5, "commit_202": 3})
    assert (new.latency_ms, new.rate_429, new.commit_202) == (5.0, 0.5, 3)
    assert knobs.latency_ms == 0
    for bad in (
        {"rate_5xx": 1.5},
        {"drop_mid_part": -1},
        {"zzz": 1},
        {"commit_202": True},
        {"rate_window": 0},
        {"part_size": 10},
    ):
        with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
            knobs.updated(bad)


def test_part_size_policy_is_8_mib_growing_for_huge_files_unless_fixed() -> None:
    assert Knobs().part_size_for(25_000_000) == 8 * MIB
    assert Knobs().part_size_for(78 * 1024 * MIB) == 8 * MIB
    assert Knobs().part_size_for(200 * 1024 * MIB) == 32 * MIB
    assert Knobs(part_size=32 * MIB).part_size_for(25_000_000) == 32 * MIB


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 1048576),
        ("50MiB", 50 * MIB),
        ("20MB", 20_000_000),
        ("1.5GiB", 3 * 512 * MIB),
        ("8 mib", 8 * MIB),
        (7, 7),
    ],
)
def test_sizes_parse(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"), [("30", 30.0), ("30s", 30.0), ("500ms", 0.5), ("5m", 300.0), ("2h", 7200.0), ("7d", 604800.0)]
)
def test_durations_parse(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "lots", "5 parsecs", "-1MiB"])
def test_bad_sizes_name_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)
