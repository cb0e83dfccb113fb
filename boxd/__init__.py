"""boxd: a backup daemon that streams backup jobs into Box."""

from __future__ import annotations

__version__ = "0.1.0"
