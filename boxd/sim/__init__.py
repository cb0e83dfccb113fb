"""boxd.sim: a local emulator of the Box Content API."""

from __future__ import annotations
