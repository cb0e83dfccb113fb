"""The retry policy as plain arithmetic: classification, Retry-After, errors, backoff."""

from __future__ import annotations

import asyncio
import math
import random
import ssl
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from boxd.box.retry import (
    MAX_RETRY_AFTER,
    Backoff,
    Fatal,
    Proceed,
    RefreshAuth,
    Retry,
    classify,
    parse_retry_after,
    to_error,
)
from boxd.errors import (
    AuthNeedsHumanError,
    BoxRequestError,
    BoxServerError,
    NameConflictError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

NOW = 1_700_000_000.0  # a fixed wall clock for HTTP-dates


# --- classify: Box's answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "headers", "expected"),
    [
        (429, "rate_limit_exceeded", {"Retry-After": "100"}, Retry(100.0, "rate_limited")),
        (429, "rate_limit_exceeded", {}, Retry(None, "rate_limited")),
        (429, None, {"retry-after": "3"}, Retry(3.0, "rate_limited")),  # token endpoint: no Box code
        (500, "internal_server_error", {}, Retry(None, "server_error")),
        (502, "bad_gateway", {}, Retry(None, "server_error")),
        (503, "unavailable", {"Retry-After": "7"}, Retry(7.0, "server_error")),
        (504, None, {}, Retry(None, "server_error")),
        (409, "operation_blocked_temporary", {}, Retry(None, "operation_blocked_temporary")),
        (409, "name_temporarily_reserved", {"Retry-After": "2"}, Retry(2.0, "name_temporarily_reserved")),
    ],
)
def test_answers_that_clear_up_by_themselves_are_retried(status, code, headers, expected) -> None:
    assert classify(status, code, headers, None, now=NOW) == expected


@pytest.mark.parametrize("code", ["unauthorized", None])
def test_a_401_asks_for_one_token_refresh(code) -> None:
    headers = {"WWW-Authenticate": 'Bearer realm="Service", error="invalid_token"'}
    assert classify(401, code, headers, None) == RefreshAuth()


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "parts_mismatch"),  # the session machine's call, not this module's
        (400, "bad_digest"),
        (400, "bad_request"),
        (403, "storage_limit_exceeded"),
        (404, "not_found"),
        (409, "item_name_in_use"),
        (409, "conflict"),
        (410, "session_expired"),
        (413, "request_entity_too_large"),
        (400, "invalid_grant"),
        (501, None),
    ],
)
def test_answers_that_will_not_change_are_fatal(status, code) -> None:
    assert classify(status, code, {"Retry-After": "5"}, None) == Fatal(status, code)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 302])
def test_a_success_or_a_202_is_not_an_error(status) -> None:
    assert classify(status, None, {"Retry-After": "1"}, None) == Proceed()


def test_an_error_status_decides_even_if_the_body_then_broke_off() -> None:
    broken = aiohttp.ClientPayloadError("body cut short")
    assert classify(500, None, {}, broken) == Retry(None, "server_error")
    assert classify(404, "not_found", {}, broken) == Fatal(404, "not_found")


def test_a_success_whose_body_broke_off_is_a_network_failure() -> None:
    assert classify(200, None, {}, aiohttp.ClientPayloadError("cut")) == Retry(None, "network")


def test_classify_needs_a_status_or_an_error() -> None:
    with pytest.raises(ValueError, match="status or an error"):
        classify(None, None, {}, None)


# --- classify: exceptions ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        TimeoutError(),
        TimeoutError(),
        ConnectionResetError(104, "reset by peer"),
        BrokenPipeError(),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ServerTimeoutError("read timed out"),
        aiohttp.ClientOSError(111, "connection refused"),
        aiohttp.ClientPayloadError("response payload is not completed"),
        aiohttp.ClientConnectionError("dropped"),
    ],
)
def test_network_errors_timeouts_and_dropped_connections_are_retried(error) -> None:
    assert classify(None, None, {}, error) == Retry(None, "network")


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        FileNotFoundError(2, "the local file went away"),  # an OSError, but not the network's
        ssl.SSLCertVerificationError("certificate verify failed"),
        asyncio.CancelledError(),
        PermanentError("no"),
    ],
)
def test_other_exceptions_are_fatal_and_carried_to_the_caller(error) -> None:
    assert classify(None, None, {}, error) == Fatal(None, None, error)


def test_errors_already_mapped_at_a_boundary_keep_their_reason_and_delay() -> None:
    assert classify(None, None, {}, RateLimitedError(retry_after=4)) == Retry(4, "rate_limited")
    server = BoxServerError("x", status=503, code="unavailable", retry_after=2.5)
    assert classify(None, None, {}, server) == Retry(2.5, "server_error")
    assert classify(None, None, {}, TransientError("reset")) == Retry(None, "network")


# --- Retry-After -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("100", 100.0), ("0", 0.0), ("1.5", 1.5), (" 3 ", 3.0), ("120\r\n", 120.0)],
)
def test_retry_after_in_seconds_is_read_as_a_number(value, seconds) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    later = format_datetime(datetime.fromtimestamp(NOW + 90, tz=UTC), usegmt=True)
    assert parse_retry_after(later, now=NOW) == pytest.approx(90.0)
    decision = classify(503, None, {"Retry-After": later}, None, now=NOW)
    assert isinstance(decision, Retry) and decision.reason == "server_error"
    assert decision.after == pytest.approx(90.0)


def test_retry_after_as_a_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize(
    "garbage", ["", "soon", "-5", "nan", "inf", "1e3", "0x10", "1_000", "5 seconds", "9" * 400, "Mon, 99 Foo"]
)
def test_unreadable_retry_after_is_ignored(garbage) -> None:
    assert parse_retry_after(garbage, now=NOW) is None
    assert classify(429, None, {"Retry-After": garbage}, None, now=NOW) == Retry(None, "rate_limited")


def test_retry_after_is_found_whatever_the_header_case_or_mapping() -> None:
    assert classify(429, None, CIMultiDict({"RETRY-AFTER": "9"}), None) == Retry(9.0, "rate_limited")
    assert classify(429, None, {"rEtRy-AfTeR": "9"}, None) == Retry(9.0, "rate_limited")


# --- to_error ----------------------------------------------------------------------------


def test_a_name_conflict_becomes_name_conflict_error_with_the_existing_item() -> None:
    existing = {"type": "file", "id": "12345", "sha1": "abc"}
    err = to_error(
        409, "item_name_in_use", "Item with the same name already exists", "rq1", {"conflicts": existing}, None
    )
    assert type(err) is NameConflictError
    assert err.conflict == existing and err.status == 409 and err.request_id == "rq1"


def test_a_retryable_answer_that_ran_out_of_attempts_is_a_transient_box_server_error() -> None:
    err = to_error(503, "unavailable", "Unavailable", "rq2", None, 30.0, attempts=5)
    assert type(err) is BoxServerError
    assert err.retry_after == 30.0 and err.code == "unavailable"
    assert "after 5 attempts" in err.message
    assert type(to_error(409, "operation_blocked_temporary", None, None, None, None)) is BoxServerError


def test_a_429_that_ran_out_of_attempts_is_rate_limited_error() -> None:
    err = to_error(429, "rate_limit_exceeded", "Request rate limit exceeded", "rq3", None, 100.0)
    assert type(err) is RateLimitedError and err.retry_after == 100.0
    assert "429 rate_limit_exceeded" in err.message and "rq3" in err.message


@pytest.mark.parametrize(("status", "code"), [(404, "not_found"), (400, "parts_mismatch"), (401, "unauthorized")])
def test_other_answers_are_box_request_errors(status, code) -> None:
    err = to_error(status, code, "nope", "rq4", None, None)
    assert type(err) is BoxRequestError and err.status == status and err.code == code


def test_invalid_grant_tells_the_operator_how_to_authorise_again() -> None:
    err = to_error(400, "invalid_grant", "Invalid refresh token", None, None, None)
    assert isinstance(err, AuthNeedsHumanError)
    assert "rclone authorize" in err.message and "boxd token import" in err.message


def test_the_message_names_status_code_box_message_and_request_id() -> None:
    err = to_error(404, "not_found", "Not Found", "e0t3hofzhm5be4bj", {"errors": []}, None)
    assert err.message == "Box answered 404 not_found: Not Found (request_id e0t3hofzhm5be4bj)"


def test_the_message_stays_one_short_line_and_survives_a_missing_code() -> None:
    err = to_error(418, None, "line one\nline two " + "x" * 1000, None, None, None)
    assert err.message.startswith("Box answered 418 http_418: line one line two x")
    assert "\n" not in err.message and len(err.message) < 400


# --- Backoff -----------------------------------------------------------------------------


def test_delays_grow_exponentially_within_full_jitter_bounds() -> None:
    backoff, rng = Backoff(base=1.0, cap=60.0), random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 ** (attempt - 1))
        delays = [backoff.next_delay(attempt, None, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9  # the jitter really spans the whole range


def test_the_same_seed_gives_the_same_delays() -> None:
    backoff = Backoff()
    first = [backoff.next_delay(a, None, random.Random(42)) for a in range(1, 8)]
    again = [backoff.next_delay(a, None, random.Random(42)) for a in range(1, 8)]
    assert first == again


def test_the_cap_holds_however_many_attempts() -> None:
    backoff = Backoff(base=0.5, cap=10.0)
    assert all(backoff.next_delay(a, None, random.Random(a)) <= 10.0 for a in (30, 1_000, 10**9))


def test_retry_after_wins_over_the_computed_delay_even_above_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert backoff.next_delay(1, 100.0, random.Random(0)) == 100.0
    assert backoff.next_delay(9, 0.0, random.Random(0)) == 0.0
    assert backoff.next_delay(9, 2.5, random.Random(0)) == 2.5


def test_retry_after_is_capped_at_fifteen_minutes() -> None:
    assert MAX_RETRY_AFTER == 900.0
    assert Backoff().next_delay(1, 86_400.0, random.Random(0)) == 900.0


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_a_nonsensical_retry_after_falls_back_to_backoff(bad) -> None:
    assert 0.0 <= Backoff(base=1.0).next_delay(1, bad, random.Random(0)) <= 1.0


def test_it_gives_up_once_max_attempts_tries_were_made() -> None:
    backoff = Backoff(max_attempts=3)
    assert [backoff.should_give_up(a) for a in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0.0}, {"base": 2.0, "cap": 1.0}, {"cap": math.inf}, {"max_attempts": 0}, {"max_retry_after": -1}],
)
def test_nonsensical_backoff_settings_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        Backoff().next_delay(0, None, random.Random(0))


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    seed=st.integers(min_value=0, max_value=2**32),
    base=st.floats(min_value=0.01, max_value=10.0),
    cap=st.floats(min_value=10.0, max_value=600.0),
)
def test_every_delay_lies_between_zero_and_the_cap(attempt, seed, base, cap) -> None:
    delay = Backoff(base=base, cap=cap).next_delay(attempt, None, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 64))
