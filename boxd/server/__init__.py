"""boxd's servers: the control API on the Unix socket, health and metrics on TCP."""

from __future__ import annotations
