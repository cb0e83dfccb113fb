"""The Box client: auth, pacing and retries, folders, simple and chunked uploads.

Knows Box and nothing about jobs or queues (DESIGN §2).
"""

from __future__ import annotations
