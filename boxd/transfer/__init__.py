"""Turning a job into file tasks (scan, compare with Box, plan) and running them."""

from __future__ import annotations
