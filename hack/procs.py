"""Stopping the rigs' child processes the one way: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import subprocess


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Ask ``proc`` to stop, wait ``grace`` seconds, then kill it; returns once it is reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
