"""structlog configuration: JSON lines for journald, readable lines on a terminal, secrets redacted.

Every log call uses a stable snake_case event name and bound fields (``job_id``, ``file``,
``session_id``); values are never interpolated into the event. The redactor drops the value of
any field whose name says it is secret, whatever the caller passed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEY = re.compile(r"(token|secret|password|passphrase|authorization|assertion|private_key)", re.IGNORECASE)
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")
REDACTED = "[redacted]"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Blank secret-named fields and bearer tokens inside strings."""
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key):
            event[key] = REDACTED
        elif isinstance(value, str) and "earer" in value:
            event[key] = _BEARER.sub("Bearer " + REDACTED, value)
    return event


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Set up structlog (and route stdlib logging through the same output)."""
    if json is None:
        json = not sys.stdout.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def get(name: str) -> Any:
    """A logger bound to ``component=name``."""
    return structlog.get_logger(component=name)  # lazy: bound on first use, after configure()
