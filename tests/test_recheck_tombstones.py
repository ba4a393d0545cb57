"""Erase tombstones, the job's pure parts: which ids count as erased while a job ran, and the
publish loop and redecision with ids that only the tombstones can catch (roster ids with no
template, folders of a first enrolment). The API's side: ``test_erasure_tombstone_api.py``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest

from rollcall_api.erasure import mentions
from rollcall_contract.model import IDENT, RecognitionJobSpec
from rollcall_contract.results import encode_results
from rollcall_job.recheck import (
    CLASS_WIDE,
    CLOCK_MARGIN_MS,
    erased_since,
    publish_checked,
    tombstone_ms,
    too_late,
)
from test_redecide import ROSTER, decided

IDS = ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("before", "now", "want"),
    [
        ({}, {}, set()),  # nobody erased
        ({}, {"b": "1-x"}, {"b"}),  # erased since the job began
        ({"b": "1-x"}, {"b": "1-x"}, set()),  # erased before it began: the same tombstone
        ({"b": "1-x"}, {"b": "2-y"}, {"b"}),  # erased before and again since
        ({"b": "1-x"}, {"b": "1-y"}, {"b"}),  # again within the same ms: the nonce differs
        ({"b": "1-x"}, {}, set()),  # pruned or expired since: older than any running job
        ({}, {"z": "1-x"}, set()),  # someone the job does not name
        ({"a": "1-x"}, {"a": "1-x", "c": "2-y", "d": "3-z"}, {"c", "d"}),
    ],
)
def test_erased_since_the_job_began(
    before: dict[str, str], now: dict[str, str], want: set[str]
) -> None:
    assert erased_since(before, now, IDS) == want


# --- identify: a roster id with no template --------------------------------------------------


@pytest.mark.parametrize(
    ("erased", "roster"),
    [
        ({"new"}, 4),  # on the roster, not enrolled: only a tombstone tells
        ({"new", "c"}, 3),  # and an absent enrolled student
        ({"zz"}, 5),  # nobody the job names: nothing changes, nothing counted
    ],
)
def test_deciding_again_without_a_roster_id_leaves_no_trace(erased: set[str], roster: int) -> None:
    before = decided()
    assert "new" in before.mentioned() and "new" not in before.named()
    after = before.without(erased)
    docs = after.documents()
    fields = dict(encode_results(docs))
    for s in erased:
        assert not mentions(fields, s) and s not in after.mentioned()
    assert docs["summary"]["roster"] == roster
    assert docs["summary"]["erased_while_running"] == len(ROSTER) - roster
    # the rest as a job never given them would publish
    want = replace(decided(erased), erased=len(ROSTER) - roster).documents()
    assert docs == want


@dataclass(frozen=True)
class Names:
    """A stand-in for ``Decided``: ``enrolled`` ids (gallery-checked) and others (tombstones)."""

    enrolled: tuple[str, ...]
    others: tuple[str, ...] = ()

    def named(self) -> Sequence[str]:
        return self.enrolled

    def mentioned(self) -> Sequence[str]:
        return (*self.enrolled, *self.others)

    def without(self, erased: Collection[str]) -> Names:
        keep = [n for n in self.enrolled if n not in erased]
        return Names(tuple(keep), tuple(n for n in self.others if n not in erased))

    def documents(self) -> Mapping[str, Any]:
        return {"names": list(self.mentioned())}


@pytest.mark.parametrize(
    ("gallery_gone", "tombstoned", "published", "erased"),
    [
        ([set()], [set()], [["a", "b", "x", "y"]], 0),
        ([set()], [{"x"}, set()], [["a", "b", "x", "y"], ["a", "b", "y"]], 1),  # a roster id
        ([{"b"}, set()], [{"b"}, set()], [["a", "b", "x", "y"], ["a", "x", "y"]], 1),  # both see b
        (
            [set(), {"a"}, set()],
            [{"y"}, set(), set()],
            [["a", "b", "x", "y"], ["a", "b", "x"], ["b", "x"]],
            2,
        ),
    ],
)
def test_publish_checked_reads_the_tombstones_of_every_id_it_publishes(
    gallery_gone: list[set[str]],
    tombstoned: list[set[str]],
    published: list[list[str]],
    erased: int,
) -> None:
    """``x[i]``: what the i-th read finds erased (each read sees every erase before it)."""
    log: list[tuple[str, Any]] = []
    gone: set[str] = set()
    tombs: set[str] = set()
    reads = {"gallery": 0, "tombstones": 0}

    def publish(documents: Mapping[str, Any]) -> str:
        log.append(("publish", documents["names"]))
        return "key"

    def enrolled(ids: Sequence[str]) -> set[str]:
        gone.update(gallery_gone[min(reads["gallery"], len(gallery_gone) - 1)])
        reads["gallery"] += 1
        return set(ids) - gone

    def erased_ids(ids: Sequence[str]) -> set[str]:
        tombs.update(tombstoned[min(reads["tombstones"], len(tombstoned) - 1)])
        reads["tombstones"] += 1
        log.append(("tombstones", list(ids)))
        return tombs & set(ids)

    last, _, count = publish_checked(Names(("a", "b"), ("x", "y")), publish, enrolled, erased_ids)
    assert [docs for e, docs in log if e == "publish"] == published
    assert count == erased and list(last.mentioned()) == published[-1]
    assert log[-1] == ("tombstones", published[-1])  # the last step reads every id it published


def test_publish_checked_refuses_decisions_that_keep_a_tombstoned_id() -> None:
    @dataclass(frozen=True)
    class Keeps(Names):
        def without(self, erased: Collection[str]) -> Keeps:
            return Keeps(tuple(n for n in self.enrolled if n not in erased), self.others)

    with pytest.raises(RuntimeError, match="still name one"):
        publish_checked(
            Keeps(("a",), ("x",)), lambda d: "k", lambda ids: set(ids), lambda ids: {"x"}
        )


# --- since the RJ's submission: the tombstone's stamp against the submission time --------------

SUBMITTED = 1_000_000  # unix ms of the RJ's creationTimestamp
MARGIN = CLOCK_MARGIN_MS


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("1700000000123-ab12cd34", 1_700_000_000_123),
        ("5-x", 5),
        ("0-x", 0),
        ("5", None),  # no nonce
        ("5-", None),
        ("-x", None),
        ("", None),
        ("x-y", None),
        ("-5-x", None),
        ("1.5-x", None),
        ("²-x", None),  # a digit to str.isdigit, not to int()
    ],
)
def test_tombstone_ms(value: str, want: int | None) -> None:
    assert tombstone_ms(value) == want


@pytest.mark.parametrize(
    ("before", "now", "submitted", "want"),
    [
        # the same tombstone at both reads: the stamp decides
        ({"b": f"{SUBMITTED + 1}-x"}, {"b": f"{SUBMITTED + 1}-x"}, SUBMITTED, {"b"}),  # queued
        ({"b": f"{SUBMITTED}-x"}, {"b": f"{SUBMITTED}-x"}, SUBMITTED, {"b"}),  # at it
        ({"b": f"{SUBMITTED - MARGIN}-x"}, {"b": f"{SUBMITTED - MARGIN}-x"}, SUBMITTED, {"b"}),
        (
            {"b": f"{SUBMITTED - MARGIN - 1}-x"},
            {"b": f"{SUBMITTED - MARGIN - 1}-x"},
            SUBMITTED,
            set(),
        ),
        ({"b": "1-x"}, {"b": "1-x"}, SUBMITTED, set()),  # erased long before: named anew
        ({"b": "1-x"}, {"b": "1-x"}, None, set()),  # no submission time: today's rule
        ({"b": f"{SUBMITTED + 1}-x"}, {"b": f"{SUBMITTED + 1}-x"}, None, set()),  # likewise
        # unreadable: erased (fail safe), unless the job cannot compare (no submission time)
        ({"b": "garbage"}, {"b": "garbage"}, SUBMITTED, {"b"}),
        ({"b": "garbage"}, {"b": "garbage"}, None, set()),
        # changed since the first read: erased, whatever the stamp says
        ({"b": "1-x"}, {"b": "2-y"}, SUBMITTED, {"b"}),
        ({}, {"b": "1-x"}, SUBMITTED, {"b"}),
        ({}, {"b": "garbage"}, None, {"b"}),
        # read at the start, stamped after the submission, gone since (expired or pruned): still
        # an erase after the submission; stamped before it: not
        ({"b": f"{SUBMITTED + 1}-x"}, {}, SUBMITTED, {"b"}),
        ({"b": "1-x"}, {}, SUBMITTED, set()),
        ({"b": f"{SUBMITTED + 1}-x"}, {}, None, set()),
        # never there, or not named
        ({}, {"z": f"{SUBMITTED + 1}-x"}, SUBMITTED, set()),
        # the class-wide tombstone is nobody's unless asked for (below)
        ({}, {CLASS_WIDE: f"{SUBMITTED + 1}-x"}, SUBMITTED, set()),
    ],
)
def test_erased_since_the_submission(
    before: dict[str, str], now: dict[str, str], submitted: int | None, want: set[str]
) -> None:
    assert erased_since(before, now, IDS, submitted) == want


@pytest.mark.parametrize(
    ("before", "now", "submitted", "want"),
    [
        ({}, {CLASS_WIDE: "1-x"}, None, set(IDS)),  # erased since the first read
        ({}, {CLASS_WIDE: "1-x"}, SUBMITTED, set(IDS)),
        ({CLASS_WIDE: "1-x"}, {CLASS_WIDE: "2-y"}, None, set(IDS)),  # again since
        (
            {CLASS_WIDE: f"{SUBMITTED + 1}-x"},
            {CLASS_WIDE: f"{SUBMITTED + 1}-x"},
            SUBMITTED,
            set(IDS),
        ),
        ({CLASS_WIDE: "garbage"}, {CLASS_WIDE: "garbage"}, SUBMITTED, set(IDS)),
        ({CLASS_WIDE: "1-x"}, {CLASS_WIDE: "1-x"}, SUBMITTED, set()),  # before the submission
        ({CLASS_WIDE: "1-x"}, {CLASS_WIDE: "1-x", "c": "2-y"}, SUBMITTED, {"c"}),  # one student
        ({CLASS_WIDE: f"{SUBMITTED + 1}-x"}, {CLASS_WIDE: f"{SUBMITTED + 1}-x"}, None, set()),
    ],
)
def test_a_class_wide_erase_erases_every_id(
    before: dict[str, str], now: dict[str, str], submitted: int | None, want: set[str]
) -> None:
    assert erased_since(before, now, IDS, submitted, class_wide=True) == want


def test_the_class_wide_field_is_no_student_id() -> None:
    assert not re.fullmatch(IDENT, CLASS_WIDE)
    with pytest.raises(ValueError):
        RecognitionJobSpec.model_validate(
            {"classCode": "6B", "images": {"claimName": "p"}, "roster": [CLASS_WIDE]}
        )


HOUR_MS = 3_600_000


@pytest.mark.parametrize(
    ("submitted", "now", "want"),
    [
        (None, SUBMITTED, False),  # no submission time (an older operator): nothing to compare
        (SUBMITTED, SUBMITTED, False),
        (SUBMITTED, SUBMITTED + 24 * HOUR_MS - 1, False),  # within a day: every erase on record
        (SUBMITTED, SUBMITTED + 24 * HOUR_MS, True),  # a day: one may have expired
        (SUBMITTED, SUBMITTED + 30 * 24 * HOUR_MS, True),
    ],
)
def test_a_job_starting_a_day_after_its_submission_refuses(
    submitted: int | None, now: int, want: bool
) -> None:
    assert too_late(submitted, now) is want
