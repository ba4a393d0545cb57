"""An enrol job's documents without students erased while it ran (``enroll.Enrolled``): pure.

The documents are a function of the photo verdicts, so ``without`` must leave no trace of an
erased student (by the API's own test of naming, ``erasure.mentions``) while keeping every other
student's verdicts and counting the erased; ``named`` is who an erase can have touched.
"""

from __future__ import annotations

from typing import Any

import pytest

from rollcall_api.erasure import mentions
from rollcall_contract.results import encode_results
from rollcall_job.enroll import Enrolled, StudentVerdicts


def used(student: str, name: str) -> dict[str, Any]:
    return {"photo": f"{student}/{name}", "student": student, "used": True, "box": [0, 0, 9, 9]}


def rejected(student: str, name: str, reason: str) -> dict[str, Any]:
    return {"photo": f"{student}/{name}", "student": student, "used": False, "reason": reason}


# ann: enrolled from one of two photos; bob: enrolled; cat: no usable photo (one unreadable)
VERDICTS = (
    StudentVerdicts("ann", (used("ann", "1.jpg"), rejected("ann", "2.jpg", "no_face")), True),
    StudentVerdicts("bob", (used("bob", "1.jpg"),), True),
    StudentVerdicts("cat", (rejected("cat", "1.jpg", "unreadable"),), False),
)
BASE = Enrolled(
    VERDICTS,
    "model-x",
    "cosine",
    1.5,
    unreadable=frozenset({"cat/1.jpg"}),
    held=frozenset({"ann", "cat"}),
    written=frozenset({"ann", "bob"}),
)


def fields(e: Enrolled) -> dict[str, str]:
    """The documents as the results hash stores them (``write_results``' encoding)."""
    return dict(encode_results(e.documents(), chunk_bytes=64))


def test_named_is_held_or_written_in_folder_order() -> None:
    assert BASE.named() == ["ann", "bob", "cat"]
    assert Enrolled(VERDICTS, "m", "cosine", 0.0, written=frozenset({"bob"})).named() == ["bob"]
    assert Enrolled(VERDICTS, "m", "cosine", 0.0, held=frozenset({"zed"})).named() == []


def test_documents_before_any_erase() -> None:
    s = BASE.documents()["summary"]
    assert (s["students"], s["enrolled"], s["images"], s["used"], s["rejected"]) == (3, 2, 4, 2, 2)
    assert (s["errors"], s["not_enrolled"], s["erased_while_running"]) == (1, ["cat"], 0)
    assert BASE.documents()["students"]["ann"] == {
        "photos": 2,
        "used": 1,
        "rejected": [{"photo": "ann/2.jpg", "reason": "no_face"}],
    }


@pytest.mark.parametrize(
    ("erased", "counts", "not_enrolled", "failed", "kept"),
    [
        # (students, enrolled, images, used, rejected, errors, erased_while_running)
        ((), (3, 2, 4, 2, 2, 1, 0), ["cat"], ["ann/2.jpg", "cat/1.jpg"], ["ann", "bob", "cat"]),
        (("ann",), (2, 1, 2, 1, 1, 1, 1), ["cat"], ["cat/1.jpg"], ["bob", "cat"]),
        (("bob",), (2, 1, 3, 1, 2, 1, 1), ["cat"], ["ann/2.jpg", "cat/1.jpg"], ["ann", "cat"]),
        (("cat",), (2, 2, 3, 2, 1, 0, 1), [], ["ann/2.jpg"], ["ann", "bob"]),
        (("ann", "cat"), (1, 1, 1, 1, 0, 0, 2), [], [], ["bob"]),
        (("ann", "bob", "cat"), (0, 0, 0, 0, 0, 0, 3), [], [], []),
        # a student this job never had: nothing to drop, nothing counted
        (
            ("zed",),
            (3, 2, 4, 2, 2, 1, 0),
            ["cat"],
            ["ann/2.jpg", "cat/1.jpg"],
            ["ann", "bob", "cat"],
        ),
    ],
)
def test_without(
    erased: tuple[str, ...],
    counts: tuple[int, ...],
    not_enrolled: list[str],
    failed: list[str],
    kept: list[str],
) -> None:
    after = BASE.without(erased)
    docs = after.documents()
    s = docs["summary"]
    keys = ("students", "enrolled", "images", "used", "rejected", "errors", "erased_while_running")
    assert tuple(s[k] for k in keys) == counts
    assert s["not_enrolled"] == not_enrolled
    assert [f["photo"] for f in s["failed"]] == failed
    assert list(docs["students"]) == kept
    assert sorted({d["student"] for d in docs["photos"]}) == kept
    assert after.named() == [k for k in kept if k in BASE.named()]
    for student in ("ann", "bob", "cat"):
        assert mentions(fields(after), student) is (student in kept)
    assert BASE.documents()["summary"]["students"] == 3  # BASE itself is unchanged


def test_erased_counts_add_up_over_rounds() -> None:
    twice = BASE.without({"ann"}).without({"bob"})
    assert twice.documents() == BASE.without({"ann", "bob"}).documents()
    assert twice.documents()["summary"]["erased_while_running"] == 2
