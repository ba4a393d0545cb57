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
as many rounds as the documents name students. A result naming S can survive only the way it can
without a running job: a failover that loses the erase's acknowledged writes.

Enrol jobs publish the same way (``enroll.Enrolled``): the students they may name that an erase
can touch are those the gallery held when the job began and those its put wrote; one found gone
is dropped from the documents (its folder's verdicts, counted in ``erased_while_running``).

Erases that find nothing to remove: a roster id with no template (or none the job holds), and a
student an enrol job enrols for the first time (the erase looks before the put writes). For them
the erase leaves a tombstone (``keys.erased``: student id -> a value no earlier erase wrote), and
the order is:

- the erase writes the tombstone first, then finds the class's galleries (SCAN) and HDELs the
  student's templates, then scans the results;
- the job reads the class's tombstones once when it starts (HGETALL, before it loads the gallery
  or enrols anyone), and after each publish (HGETALL again, beside the gallery HMGET); an id whose
  tombstone is new or changed since the first read, or stamped after the RJ's submission
  (``erased_since``), counts as erased, however the documents name it (roster, absent, not
  enrolled, a folder of photos).

Roster ids (identify): the tombstone counts as "while the job ran" in either of two ways (below:
the submission rule). Written after the job's first read: either the read after a publish sees
it: the job drops the id from the roster and every document (``Decided.without``) and publishes
again. Or that read came before the tombstone, so the publish came before the erase's results
scan, which deletes the result. First enrolment (enrol): the put comes before the publish, the
publish before the read. Either the read sees the tombstone: the job drops the student's folder
(``Enrolled.without``) and publishes again, and removes the template its put wrote (only if the
hash still holds exactly those bytes: ``GalleryStore.withdraw``), because the erase may have run
before the put and found nothing. Or the read came before the tombstone, so the put came before
the erase's SCAN and HDEL, which remove the template, and the publish before its results scan,
which deletes the result. For erases after the first read no clock is compared: a new or changed
value ("since the job began") is Redis's own order of the two reads (the job's ACL user has no
TIME), which every job can use, whatever operator built it.

Erases after the RJ was submitted but before the job's first read (the RJ queued behind the GPU
cap, a failed pod's retry not yet started): the erase has finished, its results scan included,
before the job wrote anything, so nothing will delete what the job publishes: the job must drop
the id itself, and the tombstone's value is already in its first read, so only the clock can
tell. The operator passes the RJ's ``metadata.creationTimestamp`` (``JobEnv.submitted_at``, the
apiserver's clock); a tombstone whose stamp (the API's clock, ms) is at or after it, less
``CLOCK_MARGIN_MS``, counts as erased (``erased_since``), and so does one whose value cannot be
read. The job checks the tombstones before it puts (enrol) and before its first publish
(identify), so such an id is neither written nor named even for a moment; the re-read after each
publish applies the same rule. An erase wins over every job submitted before it (within the
tombstones' TTL, below). A job without the submission time (an operator from before it) keeps
the first read as the bound: an erase while the RJ was queued then counts as before the job.

A whole-class erase (``DELETE /v1/classes/<c>/gallery``) writes the tombstone ``CLASS_WIDE``
(no student id can be ``*``) before it deletes the galleries, in the same hash, under the same
two rules. An enrol job that finds it erased treats every folder as erased: it puts nothing,
drops every folder from its documents (counted in ``erased_while_running``) and withdraws every
template its put wrote; the order is the one above (the class erase's SCAN and DEL after its
tombstone, the job's read after its put), so either the job withdraws or the erase deletes what
the put wrote. Identify jobs do not look at it: results stay on a class erase (their gallery
re-read drops whoever it finds gone, as before).

The API keeps tombstones longer than any job runs (``keys.ERASED_TTL_SECONDS``), so one written
after a job's first read is still there at its last. One written while the RJ was queued is in the
first read if the pod starts within that TTL of the submission, and counts from there even if it
expires before the last read. A pod starting later than that (an RJ queued or suspended for about
a day) could have missed an erase made meanwhile, so the job refuses to run (``too_late``: bad
input, submit the RJ again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, Self, TypeVar

from rollcall_contract import keys

log = logging.getLogger("rollcall_job.recheck")


class Redecidable(Protocol):
    """Results that can be built again as if some students had never been enrolled."""

    def named(self) -> Sequence[str]:
        """The enrolled students the documents may name (checked against the gallery)."""
        ...

    def mentioned(self) -> Sequence[str]:
        """Every student id the documents may name, ``named`` included (checked against the
        tombstones): roster ids, students not enrolled, folders of photos."""
        ...

    def without(self, erased: Collection[str]) -> Self:
        """Decided again against the gallery less ``erased``."""
        ...

    def documents(self) -> Mapping[str, Any]: ...


R = TypeVar("R", bound=Redecidable)


# The API stamps a tombstone with its clock (ms), the apiserver the RJ's creationTimestamp with its
# own, truncated to the whole second. The truncation alone only makes the submission look earlier
# (more tombstones count). The margin covers an API clock behind the apiserver's by up to 2 s,
# which would otherwise stamp an erase made just after the submission as before it. An error the
# other way (a margin too wide, an API clock ahead) counts an erase made up to 2 s before the
# submission as made after it: the job drops a student the school erased and at once submitted
# again (no enrolment, not named, counted in erased_while_running), never names an erased one.
CLOCK_MARGIN_MS = 2_000
CLASS_WIDE = keys.ERASED_CLASS_WIDE


tombstone_ms = keys.tombstone_ms


def too_late(submitted_ms: int | None, now_ms: int) -> bool:
    """Whether a job starting at ``now_ms`` (the pod's clock) may have missed an erase made since
    its RJ's submission: tombstones live ``keys.ERASED_TTL_SECONDS`` from the erase, less the hour
    it keeps for clocks and the Job controller's lag."""
    if submitted_ms is None:
        return False
    return now_ms - submitted_ms >= keys.ERASED_START_WITHIN_SECONDS * 1000


def erased_since(
    before: Mapping[str, str],
    now: Mapping[str, str],
    ids: Iterable[str],
    submitted_ms: int | None = None,
    *,
    class_wide: bool = False,
) -> set[str]:
    """Which of ``ids`` were erased since the job was submitted, given the tombstones read at its
    start (``before``) and ``now``: a tombstone ``before`` lacks or held with another value (every
    erase writes a value of its own), or, when the submission time (unix ms) is known, one stamped
    at or after it less ``CLOCK_MARGIN_MS`` or unreadable (fail safe), read now or at the start. ``class_wide``: a
    ``CLASS_WIDE`` tombstone so erased counts every one of ``ids`` as erased."""

    def after_submission(value: str | None) -> bool:
        if value is None or submitted_ms is None:
            return False
        stamp = tombstone_ms(value)
        return stamp is None or stamp >= submitted_ms - CLOCK_MARGIN_MS

    def erased(s: str) -> bool:
        value, then = now.get(s), before.get(s)
        if value is not None and value != then:
            return True
        # read at the start and gone since (expired or pruned): still an erase after submission
        return after_submission(value) or after_submission(then)

    if class_wide and erased(CLASS_WIDE):
        return set(ids)
    return {s for s in ids if erased(s)}


def publish_checked(
    decided: R,
    publish: Callable[[Mapping[str, Any]], str],
    enrolled: Callable[[Sequence[str]], Collection[str]],
    tombstoned: Callable[[Sequence[str]], Collection[str]] | None = None,
) -> tuple[R, str, int]:
    """Publish ``decided``'s documents, then re-read who is enrolled (``enrolled`` of ``named``)
    and who was erased since the job began (``tombstoned`` of ``mentioned``) and publish again
    without them until none is (the module docstring says why that is enough).

    Returns the decisions last published, the results key and how many students were erased
    while the job ran. Logs counts only: never an id.
    """
    key = publish(decided.documents())
    erased = 0
    for rounds in range(1, len(decided.mentioned()) + 2):
        named, mentioned = decided.named(), decided.mentioned()
        gone = set(named) - set(enrolled(named))
        if tombstoned is not None:
            gone |= set(tombstoned(mentioned)) & set(mentioned)
        if not gone:
            return decided, key, erased
        erased += len(gone)
        log.info(
            "students erased while the job ran: decided again and published without them",
            extra={"erased": len(gone), "round": rounds, "students": len(mentioned) - len(gone)},
        )
        redecided = decided.without(gone)
        if not set(redecided.mentioned()) <= set(mentioned) - gone or not (
            set(redecided.named()) <= set(named) - gone
        ):
            raise RuntimeError("decided again without erased students, the results still name one")
        decided = redecided
        key = publish(decided.documents())
    raise AssertionError("unreachable: every round drops a student")
