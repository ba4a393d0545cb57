"""Matching maths: score faces against a gallery, assign faces to students, fold into attendance.

Pure numpy, no I/O. Thresholds and the scores that leave this module (``Match.score``) are
*distances* in the card's metric, the convention the model cards and the RecognitionJob spec share:
Euclidean distance, or cosine distance (1 - similarity); same person when distance <= threshold.
Internally they are *affinities* (higher is better): cosine similarity, or the negated squared
Euclidean distance, so one code path serves both metrics.

Assignment within one photo is greedy on the affinity matrix: take the best remaining (face,
student) pair above the threshold, retire both, repeat. Why greedy rather than the Hungarian
algorithm: the optimum of a *sum* of scores can trade a near-certain match for two mediocre ones,
while attendance wants each confident match kept; with a threshold in force and well-separated
embeddings the two agree anyway, and greedy is O(P log P) with no SciPy. A face never claims two
students and a student is never two faces in one photo. Across photos a student is marked once, with
their best score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["cosine", "euclidean"]
FloatArray = npt.NDArray[np.float32]
UNKNOWN = "unknown"


def l2_normalise(x: FloatArray) -> FloatArray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: FloatArray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return out.astype(np.float32, copy=False)


def affinity(probes: FloatArray, gallery: FloatArray, metric: Metric) -> FloatArray:
    """(n_probes, n_rows) affinities, higher is better: one matrix product for either metric.

    Euclidean affinity is the negated *squared* distance: same order, no square root over the
    whole matrix (``from_affinity`` takes it for the few numbers that leave the module).
    """
    p = np.asarray(probes, dtype=np.float32)
    g = np.asarray(gallery, dtype=np.float32)
    if p.ndim != 2 or g.ndim != 2 or (p.size and g.size and p.shape[1] != g.shape[1]):
        raise ValueError(f"shape mismatch: probes {p.shape} vs gallery {g.shape}")
    if metric == "cosine":
        return l2_normalise(p) @ l2_normalise(g).T
    if metric == "euclidean":
        aff: FloatArray = p @ g.T  # in place from here: the matrix is the big allocation
        aff *= 2.0
        aff -= (p * p).sum(1)[:, None]
        aff -= (g * g).sum(1)[None, :]
        np.minimum(aff, 0.0, out=aff)  # rounding can make a distance^2 slightly negative
        return aff
    raise ValueError(f"unknown metric {metric!r}")


def to_affinity(distance: float, metric: Metric) -> float:
    """A distance in the card's metric as an affinity (higher is better)."""
    return 1.0 - distance if metric == "cosine" else -(distance * distance)


def from_affinity(aff: float, metric: Metric) -> float:
    """An affinity back to the card's distance: 1 - similarity, or the Euclidean distance."""
    return 1.0 - aff if metric == "cosine" else float(np.sqrt(max(-aff, 0.0)))


def per_student(aff: FloatArray, offsets: npt.NDArray[np.intp]) -> FloatArray:
    """Best affinity per student when the gallery holds several rows per student.

    ``offsets[i]`` is the first row of student ``i`` (rows grouped by student, every group
    non-empty), so a single ``maximum.reduceat`` replaces a loop over students.
    """
    if aff.shape[0] == 0 or len(offsets) == 0:
        return np.zeros((aff.shape[0], len(offsets)), dtype=np.float32)
    if len(offsets) == aff.shape[1]:  # one row per student (enrolled averages): nothing to reduce
        return aff
    return np.maximum.reduceat(aff, offsets, axis=1)


def assign_greedy(aff: FloatArray, min_affinity: float) -> list[int]:
    """Per face (row), the student column assigned to it or -1; one-to-one, best pairs first."""
    n_faces, n_students = aff.shape
    result = [-1] * n_faces
    if n_faces == 0 or n_students == 0:
        return result
    faces, students = np.nonzero(aff >= min_affinity)
    order = np.argsort(-aff[faces, students], kind="stable")
    taken: set[int] = set()
    for i in order:
        f, s = int(faces[i]), int(students[i])
        if result[f] == -1 and s not in taken:
            result[f] = s
            taken.add(s)
    return result


def top_k(aff: FloatArray, k: int) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Per face, the k best student columns and their affinities, best first."""
    k = max(0, min(k, aff.shape[1]))
    if k == 0:
        empty = np.zeros((aff.shape[0], 0))
        return empty.astype(np.intp), empty.astype(np.float32)
    if k == 1:
        best = aff.argmax(axis=1)[:, None]
        return best, np.take_along_axis(aff, best, axis=1)
    idx = np.argpartition(-aff, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(aff, idx, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(part, order, axis=1)


@dataclass(frozen=True)
class Candidate:
    student_id: str
    score: float


@dataclass(frozen=True)
class Match:
    """One face's outcome: the student it was assigned (or ``unknown``) and its top-k candidates."""

    student_id: str
    score: float | None
    candidates: tuple[Candidate, ...]


def match_faces(
    probes: FloatArray,
    gallery: FloatArray,
    offsets: npt.NDArray[np.intp],
    student_ids: Sequence[str],
    *,
    metric: Metric,
    threshold: float,
    k: int = 1,
) -> list[Match]:
    """Match one photo's faces against a gallery (rows grouped by student, see ``per_student``)."""
    if len(student_ids) != len(offsets):
        raise ValueError("one offset per student expected")
    if len(probes) == 0:
        return []
    if len(student_ids) == 0:
        return [Match(UNKNOWN, None, ()) for _ in range(len(probes))]
    aff = per_student(affinity(probes, gallery, metric), offsets)
    chosen = assign_greedy(aff, to_affinity(threshold, metric))
    idx, vals = top_k(aff, k)
    out = []
    for f, s in enumerate(chosen):
        cands = tuple(
            Candidate(student_ids[int(j)], from_affinity(float(v), metric))
            for j, v in zip(idx[f], vals[f], strict=True)
        )
        if s < 0:
            out.append(Match(UNKNOWN, None, cands))
        else:
            out.append(Match(student_ids[s], from_affinity(float(aff[f, s]), metric), cands))
    return out


@dataclass(frozen=True)
class Sighting:
    """Where a student was seen best: photo, face index in that photo, score."""

    photo: str
    face: int
    score: float


@dataclass(frozen=True)
class Attendance:
    present: dict[str, Sighting]
    absent: list[str]
    unknown: list[tuple[str, int]]  # (photo, face index) of faces that matched nobody
    not_on_roster: list[str]  # matched students outside the roster (only if the gallery had them)


def attendance(
    roster: Sequence[str], photos: Sequence[tuple[str, Sequence[Match]]], metric: Metric
) -> Attendance:
    """Fold per-photo matches into one mark per student: present (best sighting) or absent."""
    best: dict[str, Sighting] = {}
    unknown: list[tuple[str, int]] = []
    for photo, matches in photos:
        for i, m in enumerate(matches):
            if m.student_id == UNKNOWN or m.score is None:
                unknown.append((photo, i))
                continue
            prev = best.get(m.student_id)
            if prev is None or to_affinity(m.score, metric) > to_affinity(prev.score, metric):
                best[m.student_id] = Sighting(photo, i, m.score)
    on_roster = set(roster)
    present = {s: best[s] for s in roster if s in best}
    absent = [s for s in roster if s not in best]
    extra = sorted(s for s in best if s not in on_roster)
    return Attendance(present, absent, unknown, extra)
