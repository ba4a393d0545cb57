"""Audit of the decision rule's edges: exact ties, margin 0, unusable embeddings, explanations.

Each case is one a roll call can meet and where the wrong answer is a name: a face equally near
two students, a degenerate embedding, a student with a corrupt template, an id twice in the
gallery. The property tests pin the invariants the rule promises (``matcher`` module docstring)
on random matrices with many exact ties, in every order of faces and students.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.matcher import (
    AMBIGUOUS,
    CONTESTED,
    LOW_QUALITY,
    MATCHED,
    Decision,
    Match,
    Metric,
    affinity,
    attendance,
    decide,
    distances,
    match_faces,
)
from rollcall_job.quality import Measures, QualityGate, verdict

F32 = npt.NDArray[np.float32]
METRICS: list[Metric] = ["cosine", "euclidean"]
BROKEN = f"{LOW_QUALITY}:embedding"


def _eye(n: int, d: int, scale: float = 1.0) -> F32:
    """n orthogonal unit rows (times ``scale``) in d dimensions: students exactly apart."""
    return np.asarray(np.eye(n, d) * scale, dtype=np.float32)


def _ids(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def _one_each(n: int) -> npt.NDArray[np.intp]:
    return np.arange(n, dtype=np.intp)


@pytest.mark.parametrize(
    ("dist", "margin", "want"),
    [
        # equally near two students with no margin: which one is a coin toss, so neither
        ([[0.2, 0.2, 0.9]], 0.0, [Decision("needs_review", AMBIGUOUS, points_at=(0, 1))]),
        ([[0.9, 0.2, 0.2]], 0.0, [Decision("needs_review", AMBIGUOUS, points_at=(1, 2))]),
        # a margin below the float tolerance is no protection against a tie either
        ([[0.2, 0.2]], 1e-12, [Decision("needs_review", AMBIGUOUS, points_at=(0, 1))]),
        # a tied face does not excuse itself from contesting: it is not decisively elsewhere
        (
            [[0.3, 0.9], [0.2, 0.2]],
            0.0,
            [
                Decision("needs_review", CONTESTED, points_at=(0,)),
                Decision("needs_review", AMBIGUOUS, points_at=(0, 1)),
            ],
        ),
        # margin 0 still names a strictly nearest student
        ([[0.2, 0.2000001]], 0.0, [Decision("matched", MATCHED, 0)]),
    ],
)
def test_an_exact_tie_between_students_names_neither(
    dist: list[list[float]], margin: float, want: list[Decision]
) -> None:
    """With margin 0 (allowed by the spec and the cards) a tie went to the first column: the
    student's name then depended on the gallery's order, not on the face."""
    assert decide(dist, threshold=0.5, margin=margin) == want


@pytest.mark.parametrize("metric", METRICS)
def test_a_face_equal_to_two_templates_is_named_in_no_gallery_order(metric: Metric) -> None:
    """Two students enrolled from one photo (a mistake that happens): their face names neither."""
    gal = _eye(3, 8)
    gal[1] = gal[0]
    probe = gal[:1] + np.float32(0.01)
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        ids = [_ids(3)[i] for i in order]
        (m,) = match_faces(
            probe, gal[order], _one_each(3), ids, metric=metric, threshold=0.5, margin=0.0
        )
        assert (m.verdict, m.rule, m.student_id) == ("needs_review", AMBIGUOUS, None)
        assert set(m.points_at) == {"s0", "s1"}


@pytest.mark.parametrize(
    ("dist", "quality", "want"),
    [
        ([[0.05, 0.9]], ["blur"], [Decision("needs_review", "low_quality:blur", points_at=(0,))]),
        (
            [[0.05, 0.05]],
            ["pose"],
            [Decision("needs_review", "low_quality:pose", points_at=(0, 1))],
        ),
        ([[0.9, 0.9]], ["small"], [Decision("needs_review", "low_quality:small")]),
    ],
)
def test_a_face_needing_review_points_at_its_nearest_with_margin_zero(
    dist: list[list[float]], quality: list[str | None], want: list[Decision]
) -> None:
    """With margin 0 a poor face at 0.05 from a student pointed at nobody, so that student was
    reported absent instead of uncertain, and the face's explanation named no one."""
    assert decide(dist, threshold=0.5, margin=0.0, quality=quality) == want


def test_a_student_only_a_poor_face_resembles_is_uncertain_with_margin_zero() -> None:
    gal = _eye(2, 4)
    (m,) = match_faces(
        gal[:1],
        gal,
        _one_each(2),
        ["ann", "bob"],
        metric="cosine",
        threshold=0.4,
        margin=0.0,
        quality=["blur"],
    )
    att = attendance(["ann", "bob"], [("p.jpg", [m])], "cosine")
    assert list(att.uncertain) == ["ann"] and att.absent == ["bob"] and att.present == {}


def _probes_with(bad: list[float]) -> F32:
    """Face 0 is ``bad`` (a failed embedding); face 1 is student s1 itself."""
    return np.asarray([bad, [0.0, 1.0, 0.0, 0.0]], dtype=np.float32)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(
    "bad",
    [[math.nan] * 4, [math.nan, 1.0, 0.0, 0.0], [math.inf, 0.0, 0.0, 0.0], [0.0] * 4],
    ids=["nan", "one-nan", "inf", "zero"],
)
def test_an_unusable_embedding_is_never_named_and_never_contests(
    metric: Metric, bad: list[float]
) -> None:
    """NaN or inf scores (euclidean) or a NaN candidate list were 'ambiguous' with no one to
    point at, and a zero vector in euclidean was 'matched' to whichever template had the
    smallest norm. Such a face carries no evidence: review it, name no one, contest no one."""
    gal = np.asarray(np.diag([0.3, 0.6, 0.6, 0.6]), dtype=np.float32)  # unequal norms
    got = match_faces(
        _probes_with(bad), gal, _one_each(4), _ids(4), metric=metric, threshold=0.5, margin=0.1
    )
    assert [(m.verdict, m.rule, m.student_id, m.points_at) for m in got] == [
        ("needs_review", BROKEN, None, ()),
        ("matched", MATCHED, "s1", ()),
    ]
    assert got[0].score is None and got[0].candidates == ()  # no NaN/inf leaves the module


@pytest.mark.parametrize("metric", METRICS)
def test_a_corrupt_template_does_not_hide_the_students_good_one(metric: Metric) -> None:
    """A student with several templates is as near as the best of them. A NaN row made the
    student's best NaN, dropping them from the photo, and their own face was named after the
    lookalike next in line (here s1, within the threshold)."""
    s0 = [1.0, 0.0, 0.0, 0.0]
    lookalike = [0.9, 0.436, 0.0, 0.0]  # about 0.1 (cosine) / 0.45 (euclidean) from s0
    gal = np.asarray([[math.nan] * 4, s0, lookalike], dtype=np.float32)
    offsets = np.asarray([0, 2], dtype=np.intp)
    (m,) = match_faces(
        np.asarray([s0], np.float32),
        gal,
        offsets,
        ["s0", "s1"],
        metric=metric,
        threshold=0.5,
        margin=0.0,
    )
    assert (m.verdict, m.student_id) == ("matched", "s0")
    assert m.candidates[0].student_id == "s0" and m.score == pytest.approx(0.0, abs=1e-3)


def test_a_student_id_twice_in_the_gallery_is_refused() -> None:
    """Two columns for one id let one student be named by two faces of a photo (each face
    decisive for 'its' column), breaking one face per student; the gallery never has that."""
    gal = _eye(2, 4)
    with pytest.raises(ValueError, match="twice"):
        match_faces(gal, gal, _one_each(2), ["ann", "ann"], metric="cosine", threshold=0.4)


@pytest.mark.parametrize(
    "offsets", [[0, 0, 2], [1, 2, 3], [0, 2, 1], [0, 2, 4]], ids=["empty", "late", "back", "out"]
)
def test_offsets_that_do_not_group_every_row_are_refused(offsets: list[int]) -> None:
    """``maximum.reduceat`` gives a student with no rows the *next* student's affinity: that
    student could be named after another's face."""
    gal = _eye(4, 4)
    with pytest.raises(ValueError, match="offsets"):
        match_faces(gal, gal, np.asarray(offsets, np.intp), _ids(3), metric="cosine", threshold=0.4)


def test_an_uncertain_student_is_reported_at_its_own_distance() -> None:
    """A face within the margin of five students points at all five but lists three candidates;
    the fourth and fifth were reported at the *nearest* student's distance, not their own."""
    gal = _eye(6, 6)
    probe = np.asarray([[1.0, 0.98, 0.96, 0.94, 0.92, 0.0]], dtype=np.float32)
    (m,) = match_faces(
        probe, gal, _one_each(6), _ids(6), metric="cosine", threshold=0.7, margin=0.1
    )
    assert m.verdict == "needs_review" and m.points_at == ("s0", "s1", "s2", "s3", "s4")
    att = attendance(_ids(6), [("p.jpg", [m])], "cosine")
    dist = distances(affinity(probe, gal, "cosine"), "cosine")[0]
    for i in range(5):
        assert att.uncertain[f"s{i}"][0].score == pytest.approx(dist[i], abs=1e-6)


@pytest.mark.parametrize("metric", METRICS)
def test_an_exact_copy_is_at_distance_zero_not_minus_zero(metric: Metric) -> None:
    """'-0.0' is what the results showed for an exact copy in euclidean."""
    gal = _eye(2, 4)
    (m,) = match_faces(gal[:1], gal, _one_each(2), _ids(2), metric=metric, threshold=0.5)
    assert m.score is not None and math.copysign(1.0, m.score) == 1.0


def _canon(
    dec: Decision, students: npt.NDArray[np.intp]
) -> tuple[str, str, int | None, frozenset[int]]:
    """A decision in original student numbers, ``points_at`` as a set (ties keep column order)."""
    named = None if dec.student is None else int(students[dec.student])
    return dec.verdict, dec.rule, named, frozenset(int(students[j]) for j in dec.points_at)


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.1])
def test_the_rule_keeps_its_promises_in_any_order(margin: float) -> None:
    """On random matrices rounded to 0.05 (ties everywhere) and random quality failures:

    - a face is named only if its nearest student is within the threshold, strictly nearest,
      at least ``margin`` nearer than every other student, and it passed the gate;
    - no student is named by two faces;
    - every face pointed at is within the threshold;
    - shuffling faces or students permutes the decisions and changes nothing else.
    """
    rng = np.random.default_rng(20240611)
    threshold = 0.5
    for _ in range(400):
        nf, ns = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        dist = (rng.uniform(0, 1, size=(nf, ns)) * 20).round() / 20
        why: list[str | None] = ["blur" if rng.uniform() < 0.15 else None for _ in range(nf)]
        got = decide(dist, threshold=threshold, margin=margin, quality=why)
        named = [d.student for d in got if d.verdict == "matched"]
        assert len(named) == len(set(named))
        for f, d in enumerate(got):
            assert all(dist[f, j] <= threshold for j in d.points_at)
            if d.verdict != "matched":
                assert d.student is None
                continue
            assert d.student is not None and why[f] is None
            others = np.delete(dist[f], d.student)
            assert dist[f, d.student] <= threshold
            assert (others > dist[f, d.student]).all()
            assert (others - dist[f, d.student] >= margin - 1e-9).all()
        rows, cols = rng.permutation(nf), rng.permutation(ns)
        again = decide(
            dist[rows][:, cols], threshold=threshold, margin=margin, quality=[why[r] for r in rows]
        )
        ident = np.arange(ns, dtype=np.intp)
        assert [_canon(again[i], cols) for i in range(nf)] == [_canon(got[r], ident) for r in rows]


@pytest.mark.parametrize("metric", METRICS)
def test_present_only_through_a_face_that_names_them(metric: Metric) -> None:
    """End to end on random photos of noisy lookalikes: a present student was named by a face of
    some photo, never by two faces of one photo; an uncertain one was pointed at, not named."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(12, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    # s0..s3 have a second template (a noisy copy), rows grouped by student
    extra = base[:4] + 0.15 * rng.normal(size=(4, 16)).astype(np.float32)
    gal = np.vstack([np.stack([base[:4], extra], axis=1).reshape(8, 16), base[4:]])
    offsets = np.asarray([0, 2, 4, 6, *range(8, 16)], np.intp)
    ids = _ids(12)
    threshold, margin = (0.35, 0.05) if metric == "cosine" else (1.0, 0.06)
    photos: list[tuple[str, list[Match]]] = []
    for p in range(20):
        # s0..s7 may come (repeats: twins), farther from their templates when poorly lit
        who = rng.choice(8, size=int(rng.integers(1, 6)), replace=True)
        noise = rng.choice([0.2, 0.45], size=(len(who), 1))
        probes = (base[who] + noise * rng.normal(size=(len(who), 16))).astype(np.float32)
        # s6 and s7 only ever turn away: they can be uncertain, never present
        why: list[str | None] = ["pose" if w >= 6 or rng.uniform() < 0.1 else None for w in who]
        ms = match_faces(
            probes,
            gal,
            offsets,
            ids,
            metric=metric,
            threshold=threshold,
            margin=margin,
            quality=why,
        )
        names = [m.student_id for m in ms if m.verdict == "matched"]
        assert len(names) == len(set(names))
        for m in ms:
            assert (m.student_id is None) == (m.verdict != "matched")
            if m.verdict == "matched":
                assert m.score is not None and m.score <= threshold
                assert m.candidates[0].student_id == m.student_id
        photos.append((f"{p}.jpg", ms))
    att = attendance(ids, photos, metric)
    for sid, seen in att.present.items():
        m = dict(photos)[seen.photo][seen.face]
        assert m.verdict == "matched" and m.student_id == sid
    for sid, sightings in att.uncertain.items():
        for s in sightings:
            m = dict(photos)[s.photo][s.face]
            assert m.verdict == "needs_review" and sid in m.points_at
    assert att.present and att.uncertain and att.absent  # the data exercises all three
    assert not {"s6", "s7"} & set(att.present)


_GOOD = Measures(80.0, 0.99, 0.05, 200.0, 10.0, 0.9, 0.9)


@pytest.mark.parametrize(
    ("field", "why"),
    [
        ("face_px", "small"),
        ("detector_score", "detector_score"),
        ("pose_residual", "pose"),
        ("sharpness", "blur"),
        ("chin_hue_deg", "occluded_lower_face"),
        ("chin_chroma_ratio", "occluded_lower_face"),
        ("chin_luma", "occluded_lower_face"),
    ],
)
def test_a_measure_that_came_out_nan_fails_the_quality_gate(field: str, why: str) -> None:
    """Every comparison with NaN is false, so ``x < limit`` let a face whose landmarks, box or
    score were NaN pass the gate and be named; a measure that failed must fail its test."""
    assert verdict(_GOOD, QualityGate()) is None
    assert verdict(replace(_GOOD, **{field: math.nan}), QualityGate()) == why
