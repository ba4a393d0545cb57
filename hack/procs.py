"""The rigs' child processes: stopping them the one way, and starting one again on a port race."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# What etcd, kube-apiserver and redis-server log when their port was taken (EADDRINUSE).
BIND_FAILED = "address already in use"


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Ask ``proc`` to stop, wait ``grace`` seconds, then kill it; returns once it is reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bind_failed(log_text: str) -> bool:
    """Whether a component's start-up log says its listening port was already taken."""
    return BIND_FAILED in log_text.lower()


def retry_on_bind_failure(start: Callable[[], T], log: Path, attempts: int = 3) -> T:
    """Call ``start`` (which picks fresh ports with ``free_port()`` on each call) until it works.

    ``free_port()`` frees its port before the component binds it, so another process on this
    machine may take it in between; that start fails with EADDRINUSE in ``log``. Only such a
    failure (a RuntimeError whose new log lines say so) is retried; anything else is raised.
    """
    for attempt in range(1, attempts + 1):
        offset = log.stat().st_size if log.exists() else 0
        try:
            return start()
        except RuntimeError:
            if attempt == attempts or not log.exists():
                raise
            with log.open("rb") as f:
                f.seek(offset)
                if not bind_failed(f.read().decode(errors="replace")):
                    raise
    raise AssertionError("unreachable: the last attempt returns or raises")
