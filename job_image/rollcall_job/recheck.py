"""Publish a job's results so that an erase made while the job ran is complete.

A school may erase student S (``rollcall_api.erasure``) while a job of the class runs: the job
loaded S's template at its start and would publish a result naming S after the erase. No
transaction can span the gallery hash and the results key (another hash slot in Redis Cluster),
so the order of single-key steps does the work:

- the erase removes S's template from the gallery hash (HDEL) first, and only then scans the
  stored results and deletes every one naming S;
- the job publishes (RENAME onto its results key) first, and only then reads the gallery hash
  (``GalleryStore.enrolled``: HMGET, one key, on the primary) for every student its documents may
  name.

Either the HDEL comes before that read: the job sees S gone, decides its photos again without S
(``Decided.without``: the embeddings are kept, the models do not run again), publishes the whole
documents again (a fresh ``write_results``, same atomic path) and reads again. Or the HDEL comes
after the read, so after the publish, and the erase's scan, which starts after its HDEL, finds the
published result and deletes it. The loop ends only on a read that finds everyone it publishes
still enrolled, so the argument holds for the last publish; an earlier one naming S is replaced by
the next (RENAME) or deleted by the scan. Each round drops at least one student, so it ends within
as many rounds as the gallery has students. A result naming S can survive only the way it can
without a running job: a failover that loses the erase's acknowledged writes.

Enrol jobs publish the same way (``enroll.Enrolled``): the students they may name that an erase
can touch are those the gallery held when the job began and those its put wrote; one found gone
is dropped from the documents (its folder's verdicts, counted in ``erased_while_running``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, Self, TypeVar

log = logging.getLogger("rollcall_job.recheck")


class Redecidable(Protocol):
    """Results that can be built again as if some students had never been enrolled."""

    def named(self) -> Sequence[str]:
        """The enrolled students the documents may name."""
        ...

    def without(self, erased: Collection[str]) -> Self:
        """Decided again against the gallery less ``erased``."""
        ...

    def documents(self) -> Mapping[str, Any]: ...


R = TypeVar("R", bound=Redecidable)


def publish_checked(
    decided: R,
    publish: Callable[[Mapping[str, Any]], str],
    enrolled: Callable[[Sequence[str]], Collection[str]],
) -> tuple[R, str, int]:
    """Publish ``decided``'s documents, then re-read who is enrolled and publish again without the
    erased until none is (the module docstring says why that is enough).

    Returns the decisions last published, the results key and how many students were erased
    while the job ran. Logs counts only: never an id.
    """
    key = publish(decided.documents())
    erased = 0
    for rounds in range(1, len(decided.named()) + 2):
        named = decided.named()
        gone = set(named) - set(enrolled(named))
        if not gone:
            return decided, key, erased
        erased += len(gone)
        log.info(
            "students erased while the job ran: decided again and published without them",
            extra={"erased": len(gone), "round": rounds, "students": len(named) - len(gone)},
        )
        redecided = decided.without(gone)
        if not set(redecided.named()) <= set(named) - gone:
            raise RuntimeError("decided again without erased students, the results still name one")
        decided = redecided
        key = publish(decided.documents())
    raise AssertionError("unreachable: every round drops a student")
