"""The error tree's helpers."""

from __future__ import annotations

from boxd.errors import AuthNeedsHumanError, FileChangedError, PermanentError, TransientError, unwrap


def test_unwrap_picks_the_most_serious_boxd_error_of_a_task_group() -> None:
    transient, permanent, auth = TransientError("slow"), FileChangedError("changed"), AuthNeedsHumanError("gone")
    assert unwrap(ExceptionGroup("parts", [transient])) is transient
    assert unwrap(ExceptionGroup("parts", [transient, permanent])) is permanent
    assert unwrap(ExceptionGroup("job", [ExceptionGroup("parts", [transient]), auth, permanent])) is auth
    assert isinstance(unwrap(ExceptionGroup("x", [PermanentError("p")])), PermanentError)


def test_unwrap_leaves_foreign_errors_alone() -> None:
    bug = ValueError("bug")
    assert unwrap(ExceptionGroup("one", [bug])) is bug
    group = ExceptionGroup("two", [ValueError("a"), KeyError("b")])
    assert unwrap(group) is group
