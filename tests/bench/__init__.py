"""Benchmarks (``make bench``); results in ``tests/bench/results.json`` and ``BENCHMARKS.md``."""

from __future__ import annotations
