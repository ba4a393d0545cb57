"""Timestamps as the apiserver writes them (RFC 3339, seconds, UTC), and back to unix seconds."""

from __future__ import annotations

import datetime as dt


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(stamp: str | None) -> float:
    """Unix seconds of an RFC 3339 stamp; 0.0 for none (an object not yet stamped)."""
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
