"""Redis writes after the recognition work, retried inside the process.

Once the photos are recognised, everything left is Redis: publish the results (and, for an
enrolment, write the templates first), each designed to be run again whole. Before this module,
a failed write exited TRANSIENT and the Job's next pod loaded the models and recognised every
photo again. A Sentinel failover or a Redis restart takes seconds, so that cost minutes of GPU for
one blip, and used one of the Job's ``backoffLimit`` retries on it.

So each write phase runs again here, from its start, while the error is one a retry can fix
(``redisclient.TRANSIENT_ERRORS``: lost connection, timeout, READONLY from a demoted master,
loading, staging lost in a failover, too few replicas), for up to ``redis_retry_seconds``
(``JobSettings``) with growing random pauses. Then the error goes up and the job exits TRANSIENT
as before. A phase run again rereads what it checks (tombstones, who is enrolled), so an erase
made between two runs is honoured just as by a new pod. Not retried: a refused login
(``AuthenticationError``), which no pause fixes.
"""

from __future__ import annotations

import logging

import redis
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from rollcall_contract import redisclient

log = logging.getLogger("rollcall_job.writeretry")

FIRST_PAUSE_SECONDS = 0.5
LONGEST_PAUSE_SECONDS = 8.0


def retryable(error: BaseException) -> bool:
    """Whether a write phase that raised ``error`` may run again."""
    if isinstance(error, redis.exceptions.AuthenticationError):
        return False
    return isinstance(error, redisclient.TRANSIENT_ERRORS)


def retrying(seconds: float, phase: str) -> Retrying:
    """Attempts of one write phase (``for attempt in retrying(...): with attempt: ...``): again
    while ``retryable`` and less than ``seconds`` since the first began; 0 runs it once."""

    def note(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            "redis write failed after recognition: running the phase again",
            extra={
                "phase": phase,
                "attempt": state.attempt_number,
                "error": type(error).__name__,  # never the message: it may name hosts
                "pause_s": round(state.upcoming_sleep, 2),
            },
        )

    return Retrying(
        retry=retry_if_exception(retryable),
        stop=stop_after_delay(seconds),
        wait=wait_exponential_jitter(multiplier=FIRST_PAUSE_SECONDS, max=LONGEST_PAUSE_SECONDS),
        before_sleep=note,
        reraise=True,
    )
