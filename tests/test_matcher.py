"""Matching maths: metrics, per-student reduction, top-k, the decision rule, attendance.

The rule's cases are tables of faces x students *distances* (threshold 0.5, margin 0.1 unless a
row says otherwise), so each row reads as the situation it tests.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollcall_job.matcher import (
    AMBIGUOUS,
    BELOW_THRESHOLD,
    CONTESTED,
    MATCHED,
    Candidate,
    Decision,
    Match,
    Metric,
    Verdict,
    affinity,
    assign_greedy,
    attendance,
    decide,
    distances,
    from_affinity,
    match_faces,
    per_student,
    to_affinity,
    top_k,
)


def _rng_unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    unit: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return unit


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_affinity_agrees_with_a_pairwise_loop(metric: str) -> None:
    p, g = _rng_unit(7, 16, 1) * 3, _rng_unit(11, 16, 2) * 2
    got = affinity(p, g, metric)  # type: ignore[arg-type]
    for i in range(len(p)):
        for j in range(len(g)):
            if metric == "cosine":
                want = p[i] @ g[j] / np.linalg.norm(p[i]) / np.linalg.norm(g[j])
            else:
                want = -(np.linalg.norm(p[i] - g[j]) ** 2)  # squared: same order, no sqrt
            assert got[i, j] == pytest.approx(want, abs=1e-4)


def test_affinity_rejects_dimension_mismatch() -> None:
    with pytest.raises(ValueError):
        affinity(np.zeros((1, 4), np.float32), np.zeros((1, 5), np.float32), "cosine")


def test_per_student_takes_the_best_row_of_each_group() -> None:
    aff = np.array([[0.1, 0.9, 0.3, 0.2, 0.5]], dtype=np.float32)
    # students: A rows 0-1, B row 2, C rows 3-4
    got = per_student(aff, np.array([0, 2, 3], dtype=np.intp))
    assert got.tolist() == [[pytest.approx(0.9), pytest.approx(0.3), pytest.approx(0.5)]]


@pytest.mark.parametrize(
    ("aff", "threshold", "want"),
    [
        # each face its own best student
        ([[0.9, 0.1], [0.2, 0.8]], 0.5, [0, 1]),
        # both faces prefer student 0: the stronger claim wins, the other falls back to student 1
        ([[0.9, 0.6], [0.7, 0.1]], 0.5, [0, -1]),
        ([[0.9, 0.6], [0.7, 0.65]], 0.5, [0, 1]),
        # below threshold: unknown
        ([[0.4, 0.3]], 0.5, [-1]),
        # more faces than students
        ([[0.9], [0.8], [0.95]], 0.5, [-1, -1, 0]),
        # no students
        ([[], []], 0.5, [-1, -1]),
    ],
)
def test_assign_greedy(aff: list[list[float]], threshold: float, want: list[int]) -> None:
    arr = np.array(aff, dtype=np.float32).reshape(len(aff), -1)
    assert assign_greedy(arr, threshold) == want


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 6), st.integers(0, 6), st.integers(0, 10_000))
def test_assignment_is_one_to_one_and_above_threshold(nf: int, ns: int, seed: int) -> None:
    aff = np.random.default_rng(seed).uniform(-1, 1, size=(nf, ns)).astype(np.float32)
    got = assign_greedy(aff, 0.2)
    chosen = [s for s in got if s >= 0]
    assert len(chosen) == len(set(chosen))
    assert all(aff[f, s] >= 0.2 for f, s in enumerate(got) if s >= 0)
    # maximality: no unassigned face could still take a free student above threshold
    free = set(range(ns)) - set(chosen)
    for f, s in enumerate(got):
        if s < 0:
            assert all(aff[f, j] < 0.2 for j in free)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("score", [0.0, 0.3, 0.6, 1.2])
def test_affinity_conversion_round_trips_and_keeps_order(metric: Metric, score: float) -> None:
    m = metric
    assert from_affinity(to_affinity(score, m), m) == pytest.approx(score)
    if score > 0:  # a smaller distance is a better match in both metrics
        assert to_affinity(score - 0.1, m) > to_affinity(score, m)


def test_top_k_orders_best_first() -> None:
    aff = np.array([[0.1, 0.7, 0.3, 0.9]], dtype=np.float32)
    idx, vals = top_k(aff, 3)
    assert idx.tolist() == [[3, 1, 2]]
    assert vals[0].tolist() == pytest.approx([0.9, 0.7, 0.3])
    assert top_k(aff, 10)[0].shape == (1, 4)
    one_idx, one_val = top_k(aff, 1)
    assert one_idx.tolist() == [[3]] and one_val.tolist() == [[pytest.approx(0.9)]]


M: Verdict = "matched"
R: Verdict = "needs_review"
U: Verdict = "unknown"


@pytest.mark.parametrize(
    ("dist", "quality", "want", "margin"),
    [
        # one face, clearly its own student
        ([[0.2, 0.8]], None, [Decision(M, MATCHED, 0)], 0.1),
        # nearest student beyond the threshold: unknown, whoever it is
        ([[0.55, 0.9]], None, [Decision(U, BELOW_THRESHOLD)], 0.1),
        # exactly at the threshold still matches (distance <= threshold)
        ([[0.5, 0.9]], None, [Decision(M, MATCHED, 0)], 0.1),
        # second student within the margin: needs review, pointing at both, nearest first
        ([[0.30, 0.35]], None, [Decision(R, AMBIGUOUS, points_at=(0, 1))], 0.1),
        ([[0.35, 0.30, 0.9]], None, [Decision(R, AMBIGUOUS, points_at=(1, 0))], 0.1),
        # second student within the margin but beyond the threshold: points only at the first
        ([[0.45, 0.52]], None, [Decision(R, AMBIGUOUS, points_at=(0,))], 0.1),
        # a gap of exactly the margin is decisive
        ([[0.2, 0.3]], None, [Decision(M, MATCHED, 0)], 0.1),
        # two faces claim one student within the margin: both need review, neither is named
        ([[0.20, 0.9], [0.25, 0.9]], None, [Decision(R, CONTESTED, points_at=(0,))] * 2, 0.1),
        # an identical twin: a tie always contests
        ([[0.2, 0.9], [0.2, 0.9]], None, [Decision(R, CONTESTED, points_at=(0,))] * 2, 0.1),
        # a far weaker claim does not stop the strong one; the weak face is not moved elsewhere
        (
            [[0.10, 0.9], [0.40, 0.9]],
            None,
            [Decision(M, MATCHED, 0), Decision(R, CONTESTED, points_at=(0,))],
            0.1,
        ),
        # the masks (its distances less 0.1, for this threshold): a stranger (face 0)
        # nearer student 0 than student 0's own masked face (face 1, second choice student 1).
        # Greedy named face 0 student 0 and moved face 1 onto student 1; the rule names nobody.
        (
            [[0.381, 0.95], [0.408, 0.46]],
            None,
            [Decision(R, CONTESTED, points_at=(0,)), Decision(R, AMBIGUOUS, points_at=(0, 1))],
            0.1,
        ),
        # never move a student onto a weaker face: face 0 is ambiguous between 0 and 1, so
        # student 1's best face is taken by an ambiguity and face 1 (student 1 at 0.30) must not
        # get it either, although nothing else claims it
        (
            [[0.20, 0.25, 0.9], [0.9, 0.30, 0.9]],
            None,
            [Decision(R, AMBIGUOUS, points_at=(0, 1)), Decision(R, CONTESTED, points_at=(1,))],
            0.1,
        ),
        # a face decisively someone else does not contest, even when near
        (
            [[0.20, 0.25], [0.05, 0.26]],
            None,
            [Decision(R, AMBIGUOUS, points_at=(0, 1)), Decision(M, MATCHED, 0)],
            0.1,
        ),
        # a face just beyond the threshold still contests a claim within the margin of it
        (
            [[0.48, 0.9], [0.53, 0.9]],
            None,
            [Decision(R, CONTESTED, points_at=(0,)), Decision(U, BELOW_THRESHOLD)],
            0.1,
        ),
        # quality failures: never a name, whatever the distance; points at what is in reach
        ([[0.05, 0.9]], ["blur"], [Decision(R, "low_quality:blur", points_at=(0,))], 0.1),
        (
            [[0.9, 0.9]],
            ["occluded_lower_face"],
            [Decision(R, "low_quality:occluded_lower_face")],
            0.1,
        ),
        # a low-quality face near a student contests a good face's claim on that student
        (
            [[0.20, 0.9], [0.22, 0.9]],
            [None, "pose"],
            [
                Decision(R, CONTESTED, points_at=(0,)),
                Decision(R, "low_quality:pose", points_at=(0,)),
            ],
            0.1,
        ),
        # margin 0: the rule keeps only the one-face-per-student part
        (
            [[0.2, 0.21], [0.3, 0.9]],
            None,
            [Decision(M, MATCHED, 0), Decision(R, CONTESTED, points_at=(0,))],
            0.0,
        ),
        # no students enrolled: unknown, or review for a poor face
        (
            [[], []],
            [None, "small"],
            [Decision(U, BELOW_THRESHOLD), Decision(R, "low_quality:small")],
            0.1,
        ),
    ],
)
def test_decide(
    dist: list[list[float]],
    quality: list[str | None] | None,
    want: list[Decision],
    margin: float,
) -> None:
    arr = np.array(dist, dtype=np.float64).reshape(len(dist), -1)
    assert decide(arr, threshold=0.5, margin=margin, quality=quality) == want


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 6),
    st.integers(0, 6),
    st.integers(0, 10_000),
    st.sampled_from([0.0, 0.05, 0.2]),
)
def test_the_rule_names_at_most_one_face_per_student_and_only_decisively(
    nf: int, ns: int, seed: int, margin: float
) -> None:
    rng = np.random.default_rng(seed)
    dist = rng.uniform(0, 1, size=(nf, ns)).round(2)  # rounding makes ties happen
    bad = rng.uniform(size=nf) < 0.2
    quality = ["blur" if b else None for b in bad]
    got = decide(dist, threshold=0.5, margin=margin, quality=quality)
    named = [(f, d.student) for f, d in enumerate(got) if d.verdict == "matched"]
    assert len({s for _, s in named}) == len(named)  # one face per student
    for f, s in named:
        assert s is not None and not bad[f]
        assert dist[f, s] <= 0.5 and dist[f, s] == dist[f].min()  # its own nearest, never moved
        others = np.delete(dist[f], s)
        assert (others - dist[f, s] >= margin - 1e-9).all()  # decisive against the others
        for g in range(nf):
            near = dist[g, s] - dist[f, s] < margin - 1e-9 or dist[g, s] <= dist[f, s]
            if g != f and near:  # a near rival face must be decisively someone else
                t = int(dist[g].argmin())
                assert not bad[g] and t != s and dist[g, t] <= 0.5
                assert (np.delete(dist[g], t) - dist[g, t] >= margin - 1e-9).all()
    for f, d in enumerate(got):
        if d.verdict == "unknown":
            assert not bad[f] and (ns == 0 or dist[f].min() > 0.5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_match_faces_finds_noisy_copies_and_reports_strangers(metric: Metric) -> None:
    gal = _rng_unit(5, 64, 3)
    ids = ["s0", "s1", "s2", "s3", "s4"]
    probes = np.vstack([gal[3] + 0.05 * _rng_unit(1, 64, 4), gal[1], _rng_unit(1, 64, 9)])
    threshold = 0.2 if metric == "cosine" else 0.6  # both distances
    got = match_faces(
        probes,
        gal,
        np.arange(5, dtype=np.intp),
        ids,
        metric=metric,
        threshold=threshold,
        margin=0.05,
    )
    assert [m.student_id for m in got] == ["s3", "s1", None]
    assert [m.verdict for m in got] == ["matched", "matched", "unknown"]
    assert got[0].candidates[0].student_id == "s3" and len(got[0].candidates) == 3
    assert got[2].rule == BELOW_THRESHOLD and got[2].score is not None and got[2].score > threshold
    # scores are distances (not affinities) in both metrics: an exact copy is at 0
    assert got[1].score == pytest.approx(0.0, abs=1e-3)
    assert got[0].score is not None and 0 < got[0].score < threshold
    assert [c.score for c in got[0].candidates] == sorted(c.score for c in got[0].candidates)


def test_match_faces_with_empty_gallery_marks_everyone_unknown() -> None:
    got = match_faces(
        np.ones((2, 4), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.intp),
        [],
        metric="cosine",
        threshold=0.5,
    )
    assert [(m.student_id, m.verdict, m.candidates) for m in got] == [(None, "unknown", ())] * 2


def _m(verdict: Verdict, student: str | None, score: float, *points: str) -> Match:
    return Match(
        student,
        score,
        tuple(Candidate(s, score) for s in points),
        verdict,
        "r",
        points,
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_attendance_across_photos(metric: str) -> None:
    good, bad = 0.2, 0.4  # distances in either metric
    photos = [
        # ann named weakly, dee only pointed at by a face needing review, a stranger
        ("a.jpg", [_m(M, "ann", bad), _m(R, None, 0.3, "dee", "eve"), _m(U, None, 0.9)]),
        # ann named better here; bob named; a review face points at bob too (bob stays present)
        ("b.jpg", [_m(M, "bob", bad), _m(M, "ann", good), _m(R, None, 0.35, "bob")]),
        ("c.jpg", []),
    ]
    att = attendance(["ann", "bob", "cy", "dee", "eve"], photos, metric)  # type: ignore[arg-type]
    assert set(att.present) == {"ann", "bob"}
    assert (att.present["ann"].photo, att.present["ann"].face) == ("b.jpg", 1)
    assert att.present["ann"].score == good
    assert sorted(att.uncertain) == ["dee", "eve"]
    assert [(v.photo, v.face) for v in att.uncertain["dee"]] == [("a.jpg", 1)]
    assert att.absent == ["cy"]
    assert att.unknown == [("a.jpg", 2)]
    assert att.review == [("a.jpg", 1, "r"), ("b.jpg", 2, "r")]
    assert att.not_on_roster == []


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(6))
def test_match_faces_decides_on_the_students_in_reach_as_on_all(metric: Metric, seed: int) -> None:
    """match_faces runs the rule on the columns within threshold + margin only: same outcome."""
    rng = np.random.default_rng(seed)
    gal = _rng_unit(40, 16, seed)
    # faces near some students (some near two), and strangers
    probes = np.vstack(
        [gal[rng.integers(40)] + 0.3 * _rng_unit(1, 16, 100 + i) for i in range(8)]
        + [_rng_unit(3, 16, 200 + seed)]
    ).astype(np.float32)
    ids = [f"s{i}" for i in range(40)]
    threshold, margin = (0.3, 0.05) if metric == "cosine" else (0.8, 0.1)
    quality = [None, None, "blur", *[None] * (len(probes) - 3)]
    got = match_faces(
        probes,
        gal,
        np.arange(40, dtype=np.intp),
        ids,
        metric=metric,
        threshold=threshold,
        margin=margin,
        quality=quality,
    )
    full = decide(
        distances(affinity(probes, gal, metric), metric),
        threshold=threshold,
        margin=margin,
        quality=quality,
    )
    assert [(m.verdict, m.rule) for m in got] == [(d.verdict, d.rule) for d in full]
    assert [m.student_id for m in got] == [
        None if d.student is None else ids[d.student] for d in full
    ]
    assert [m.points_at for m in got] == [tuple(ids[j] for j in d.points_at) for d in full]
    assert {m.verdict for m in got} >= {"matched", "unknown"}  # the data exercises the rule
