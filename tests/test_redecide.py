"""Deciding a job's photos again without students erased while it ran, and the publish loop: pure.

``Decided.without`` must give exactly what a job started after the erase would publish (the same
photos decided against the gallery and roster less those students), and leave no trace of them
by the API's own test of naming (``rollcall_api.erasure.mentions``). ``publish_checked`` must end
only after a re-read that finds everyone it published still enrolled.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rollcall_api.erasure import mentions
from rollcall_contract.results import encode_results
from rollcall_job.gallery import Gallery, GalleryMeta, encode, without
from rollcall_job.matcher import Match
from rollcall_job.photos import Photo, PhotoError
from rollcall_job.pipeline import Decided, PhotoFaces, match_photo
from rollcall_job.recheck import publish_checked

META = GalleryMeta("toy", 3, "cosine")
THRESHOLD, MARGIN = 0.3, 0.05
# a and a2 are near each other (a face between them is ambiguous); b and c far from both
ENROLLED = {
    "a": [[1.0, 0.0, 0.0]],
    "a2": [[0.98, 0.2, 0.0], [0.97, 0.22, 0.0]],  # two templates: rows grouped per student
    "b": [[0.0, 1.0, 0.0]],
    "c": [[0.0, 0.0, 1.0]],
}
PHOTOS = {
    "p0.jpg": [[1.0, -0.8, 0.0], [0.0, 1.0, 0.05]],  # a (a2 beyond the threshold), b
    "p1.jpg": [[0.99, 0.1, 0.0]],  # between a and a2: needs review
    "p2.jpg": None,  # unreadable
}
ROSTER = ("a", "a2", "b", "c", "new")  # "new" is not enrolled


def gallery(erased: Collection[str] = ()) -> Gallery:
    rows = [(s, encode(v, META.dim)) for s, v in ENROLLED.items() if s not in erased]
    return Gallery.from_rows(META, rows)


def decided(erased: Collection[str] = ()) -> Decided:
    """The photos decided against the gallery less ``erased``: a job started after the erase."""
    g = gallery(erased)
    photos: list[PhotoFaces] = []
    matches: list[tuple[Match, ...]] = []
    for name, faces in PHOTOS.items():
        if faces is None:
            err = PhotoError("corrupt")
            photos.append(
                PhotoFaces(Photo(name, Path(name)), None, [], [], np.zeros((0, 3), np.float32), err)
            )
            matches.append(())
            continue
        emb = np.asarray(faces, np.float32)
        boxes = [(10.0 * i, 0.0, 10.0 * i + 9, 9.0) for i in range(len(faces))]
        pf = PhotoFaces(Photo(name, Path(name)), None, boxes, [0.9] * len(faces), emb)
        photos.append(pf)
        matches.append(tuple(match_photo(pf, g, threshold=THRESHOLD, margin=MARGIN)))
    roster = tuple(s for s in ROSTER if s not in erased)
    return Decided(tuple(photos), tuple(matches), g, roster, THRESHOLD, MARGIN, 1, 3, 1.5)


def marks(documents: Mapping[str, Any]) -> dict[str, Any]:
    att = documents["attendance"]
    return {
        "present": sorted(p["student"] for p in att["present"]),
        "uncertain": sorted(u["student"] for u in att["uncertain"]),
        "absent": att["absent"],
        "not_enrolled": att["not_enrolled"],
        "decisions": [[f["decision"] for f in p.get("faces", [])] for p in documents["photos"]],
    }


def test_the_table_starts_from_the_decisions_it_means() -> None:
    assert marks(decided().documents()) == {
        "present": ["a", "b"],
        "uncertain": ["a2"],  # p1's face points at a and a2; a is present from p0
        "absent": ["c"],
        "not_enrolled": ["new"],
        "decisions": [["matched", "matched"], ["needs_review"], []],
    }


@pytest.mark.parametrize(
    ("erased", "want"),
    [
        ((), None),  # nothing erased: the same documents
        (
            {"a"},  # p0's face 0 is nobody's now; p1's face is a2's alone
            {"present": ["a2", "b"], "uncertain": [], "absent": ["c"], "not_enrolled": ["new"],
             "decisions": [["unknown", "matched"], ["matched"], []]},
        ),
        (
            {"a2"},  # the face that pointed at a2 and a is now a's
            {"present": ["a", "b"], "uncertain": [], "absent": ["c"], "not_enrolled": ["new"],
             "decisions": [["matched", "matched"], ["matched"], []]},
        ),
        (
            {"c"},  # an absent student: gone from the absent list and the roster count
            {"present": ["a", "b"], "uncertain": ["a2"], "absent": [], "not_enrolled": ["new"],
             "decisions": [["matched", "matched"], ["needs_review"], []]},
        ),
        (
            {"a", "a2", "b", "c"},  # the whole gallery: nobody named, the unenrolled stay
            {"present": [], "uncertain": [], "absent": [], "not_enrolled": ["new"],
             "decisions": [["unknown", "unknown"], ["unknown"], []]},
        ),
    ],
)  # fmt: skip
def test_deciding_again_without_erased_students(
    erased: set[str], want: dict[str, Any] | None
) -> None:
    before = decided()
    after = before.without(erased)
    docs = after.documents()
    # exactly what a job started after the erase publishes, and how many were erased meanwhile
    assert docs == replace(decided(erased), erased=len(erased)).documents()
    assert docs["summary"]["erased_while_running"] == len(erased)
    assert marks(docs) == (want or marks(before.documents()))
    fields = dict(encode_results(docs))
    for s in erased:
        assert not mentions(fields, s)
        assert s not in after.named() and s not in after.gallery.student_ids
    assert docs["summary"]["roster"] == len(ROSTER) - len(erased)
    assert before.documents() == decided().documents()  # the original is left as it was


def test_without_copies_the_kept_rows_and_drops_the_erased_ones() -> None:
    g = gallery()
    kept = without(g, {"a2", "zz"})
    assert kept.student_ids == ("a", "b", "c")
    assert kept.embeddings.tolist() == [
        pytest.approx(v) for s in ("a", "b", "c") for v in ENROLLED[s]
    ]
    assert kept.offsets.tolist() == [0, 1, 2]
    assert not np.shares_memory(kept.embeddings, g.embeddings)
    assert without(g, {"zz"}) is g  # nobody of the gallery: nothing to copy
    assert len(without(g, set(ENROLLED))) == 0


# --- the publish loop -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """A stand-in for ``Decided``: documents naming exactly ``names``."""

    names: tuple[str, ...]
    drops: bool = True  # False: a broken ``without`` that keeps the erased

    def named(self) -> Sequence[str]:
        return self.names

    def mentioned(self) -> Sequence[str]:
        return self.names

    def without(self, erased: Collection[str]) -> Names:
        return (
            self
            if not self.drops
            else replace(self, names=tuple(n for n in self.names if n not in erased))
        )

    def documents(self) -> Mapping[str, Any]:
        return {"names": list(self.names)}


@pytest.mark.parametrize(
    ("erasures", "published", "erased"),
    [
        ([set()], [["a", "b", "c"]], 0),  # nobody erased: one publish, one read
        ([{"b"}, set()], [["a", "b", "c"], ["a", "c"]], 1),
        ([{"b"}, {"b", "c"}, set()], [["a", "b", "c"], ["a", "c"], ["a"]], 2),  # a second erase
        ([{"a", "b", "c"}], [["a", "b", "c"], []], 3),  # the class erased: nothing left to read
        ([{"x"}, set()], [["a", "b", "c"]], 0),  # someone the documents do not name
    ],
)
def test_publish_checked_ends_on_a_clean_read_after_the_last_publish(
    erasures: list[set[str]], published: list[list[str]], erased: int
) -> None:
    """``erasures[i]``: who is erased by the i-th read (each read sees every erase before it)."""
    log: list[tuple[str, Any]] = []
    gone: set[str] = set()
    reads = 0

    def publish(documents: Mapping[str, Any]) -> str:
        log.append(("publish", documents["names"]))
        return f"key-{len(log)}"

    def enrolled(ids: Sequence[str]) -> set[str]:
        nonlocal reads
        gone.update(erasures[min(reads, len(erasures) - 1)])
        reads += 1
        log.append(("read", list(ids)))
        return set(ids) - gone

    last, key, count = publish_checked(Names(("a", "b", "c")), publish, enrolled)
    assert [docs for e, docs in log if e == "publish"] == published
    assert count == erased and list(last.names) == published[-1]
    assert log[-1] == ("read", published[-1])  # the last step is a read finding them all
    assert key == f"key-{max(i for i, (e, _) in enumerate(log, 1) if e == 'publish')}"


def test_publish_checked_refuses_decisions_that_keep_an_erased_student() -> None:
    with pytest.raises(RuntimeError, match="still name one"):
        publish_checked(Names(("a", "b"), drops=False), lambda d: "k", lambda ids: {"a"})
