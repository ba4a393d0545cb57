"""Where built models and fetched files live, keyed by version (no heavy imports here)."""

from __future__ import annotations

import os
from pathlib import Path

# Bump when the converter, the cards or the pinned sources change: a new directory is built.
MODELS_VERSION = 12


def cache_root() -> Path:
    """``$ROLLCALL_CACHE``, else ``$XDG_CACHE_HOME/rollcall``, else ``~/.cache/rollcall``."""
    if root := os.environ.get("ROLLCALL_CACHE"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rollcall"


def models_dir(version: int = MODELS_VERSION) -> Path:
    return cache_root() / "models" / f"v{version}"
