"""The emulator's realism knobs and injected faults.

:class:`Knobs` holds every setting that ``boxd sim`` takes as a flag and that
``POST /_sim/faults`` may change at run time under the same name. The start-up values are
kept so ``DELETE /_sim/faults`` can restore them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB

#: Box answers chunked sessions only for files of at least this many bytes (decimal 20 MB).
SESSION_MIN_SIZE = 20_000_000
#: Box's documented session lifetime.
SESSION_TTL = 7 * 24 * 3600.0


@dataclass
class Knobs:
    """Settings that change how the emulator behaves; all names match the CLI flags."""

    token_ttl: float = 3600.0
    #: 0 = Box-like policy (8 MiB, growing for huge files); otherwise a fixed part size.
    part_size: int = 0
    api_calls_per_minute: int = 0
    uploads_per_minute: int = 0
    rate_window: float = 60.0
    rate_burst: int = 1
    latency_ms: float = 0.0
    bandwidth: int = 0
    commit_202: int = 0
    #: First N commits of each session answer 400 parts_mismatch (Box does, right after the last part).
    commit_mismatch: int = 0
    space_amount: int = 10 * 1024 * GIB
    max_upload_size: int = 5 * GIB
    session_ttl: float = SESSION_TTL
    # Faults: admin API only.
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    retry_after: int = 1
    drop_mid_part: float = 0.0

    def updated(self, changes: dict[str, Any]) -> Knobs:
        """A copy with ``changes`` applied; raises ``ValueError`` naming a bad key or value."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        new = dataclasses.replace(self)
        for key, value in changes.items():
            if key not in fields:
                raise ValueError(f"unknown knob {key!r}; known: {', '.join(sorted(fields))}")
            current = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"knob {key!r} must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"knob {key!r} must not be negative, got {value!r}")
            if isinstance(current, int) and not float(value).is_integer():
                raise ValueError(f"knob {key!r} must be an integer, got {value!r}")
            if key in ("rate_429", "rate_5xx", "drop_mid_part") and value > 1:
                raise ValueError(f"knob {key!r} is a probability (0..1), got {value!r}")
            setattr(new, key, type(current)(value))
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot work together."""
        if self.rate_window <= 0:
            raise ValueError("rate_window must be positive")
        if self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if self.token_ttl <= 0:
            raise ValueError("token_ttl must be positive")
        if self.part_size and self.part_size < 1024:
            raise ValueError("part_size must be at least 1024 bytes (or 0 for Box's policy)")

    def part_size_for(self, file_size: int) -> int:
        """The part size Box would choose for a file of ``file_size`` bytes.

        Box documents no formula: 8 MiB is what it usually answers, and it keeps sessions
        under about 10,000 parts, so the emulator doubles the part size until they fit.
        """
        if self.part_size:
            return self.part_size
        size = 8 * MIB
        while file_size > size * 10_000:
            size *= 2
        return size
