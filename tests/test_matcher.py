"""Matching maths: metrics, per-student reduction, one-to-one assignment, top-k, attendance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollcall_job.matcher import (
    UNKNOWN,
    Match,
    Metric,
    affinity,
    assign_greedy,
    attendance,
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


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_match_faces_finds_noisy_copies_and_reports_strangers(metric: Metric) -> None:
    gal = _rng_unit(5, 64, 3)
    ids = ["s0", "s1", "s2", "s3", "s4"]
    probes = np.vstack([gal[3] + 0.05 * _rng_unit(1, 64, 4), gal[1], _rng_unit(1, 64, 9)])
    threshold = 0.2 if metric == "cosine" else 0.6  # both distances
    got = match_faces(
        probes, gal, np.arange(5, dtype=np.intp), ids, metric=metric, threshold=threshold, k=2
    )
    assert [m.student_id for m in got] == ["s3", "s1", UNKNOWN]
    assert got[0].candidates[0].student_id == "s3" and len(got[0].candidates) == 2
    assert got[2].score is None
    # scores are distances (not affinities) in both metrics: an exact copy is at 0
    assert got[1].score == pytest.approx(0.0, abs=1e-3)
    assert got[0].score is not None and 0 < got[0].score < threshold


def test_match_faces_with_empty_gallery_marks_everyone_unknown() -> None:
    got = match_faces(
        np.ones((2, 4), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.intp),
        [],
        metric="cosine",
        threshold=0.5,
    )
    assert [m.student_id for m in got] == [UNKNOWN, UNKNOWN]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_attendance_keeps_each_students_best_sighting(metric: str) -> None:
    good, bad = 0.2, 0.5  # distances in either metric
    photos = [
        ("a.jpg", [Match("ann", bad, ()), Match(UNKNOWN, None, ())]),
        ("b.jpg", [Match("bob", bad, ()), Match("ann", good, ())]),
        ("c.jpg", []),
    ]
    att = attendance(["ann", "bob", "cy"], photos, metric)  # type: ignore[arg-type]
    assert set(att.present) == {"ann", "bob"}
    assert (att.present["ann"].photo, att.present["ann"].face) == ("b.jpg", 1)
    assert att.present["ann"].score == good
    assert att.absent == ["cy"]
    assert att.unknown == [("a.jpg", 1)]
    assert att.not_on_roster == []
