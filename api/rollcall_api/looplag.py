"""Event-loop lag, and the part of it the API's own work causes.

A timer that fires late means every request waiting on the loop was late too. On a busy node the
lateness has two causes: the loop was running other callbacks (the API's own cost, which this
process can fix), or the loop thread was runnable but waiting for a CPU that other processes held
(the node's, which only CPU requests and limits fix). Linux counts the second per thread as
``run_delay`` in ``/proc/thread-self/schedstat``; lag less that wait is the loop's own share.
"""

from __future__ import annotations

import os
from pathlib import Path

# Fine buckets up to 50 ms: the goal is a p99 of 10 ms, and 20-50 ms buckets hide where it falls.
LAG_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0065,
    0.008,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

SCHEDSTAT = Path("/proc/thread-self/schedstat")


def run_delay(schedstat: str) -> float | None:
    """Seconds this thread has spent runnable but not running, from a schedstat line.

    The line is ``<cpu ns> <run_delay ns> <timeslices>``; None if it is not one.
    """
    fields = schedstat.split()
    if len(fields) != 3 or not all(f.isdigit() for f in fields):
        return None
    return int(fields[1]) / 1e9


class RunDelay:
    """The run delay of the thread that created it (the loop thread: create it there).

    The file stays open and is re-read with ``pread``: 3 us a read, where opening it each time
    took 50 us, a cost that a 10 ms probe period would pay 200 times a second.
    """

    def __init__(self, path: Path = SCHEDSTAT) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self) -> float | None:
        """Seconds runnable but not running so far; None where the kernel does not say."""
        if self._fd is None:
            return None
        try:
            return run_delay(os.pread(self._fd, 128, 0).decode("ascii", errors="replace"))
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def own_share(lag: float, waited: float | None) -> float:
    """The lag not explained by waiting for a CPU (all of it when the wait is unknown).

    An estimate that errs low: a wait early in the interval, made up while the loop idled, is
    subtracted too. A short probe interval keeps that small; the full lag is the upper bound.
    """
    if waited is None:
        return lag
    return max(0.0, lag - waited)
