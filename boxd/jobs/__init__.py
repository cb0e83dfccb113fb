"""Jobs: the pure state machine (:mod:`.models`) and the durable SQLite queue (:mod:`.store`)."""

from __future__ import annotations
