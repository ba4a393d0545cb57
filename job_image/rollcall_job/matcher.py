"""Matching maths: score faces against a gallery, decide each face, fold into attendance.

Pure numpy, no I/O. Thresholds and the scores that leave this module are *distances* in the card's
metric, the convention the model cards and the RecognitionJob spec share: Euclidean distance, or
cosine distance (1 - similarity); same person when distance <= threshold. Internally they are
*affinities* (higher is better): cosine similarity, or the negated squared Euclidean distance, so
one code path serves both metrics.

The decision rule (``decide``) prefers "not sure" to a wrong name, because the worst outcome of a
roll call is an absent student marked present. A face names a student only when all of these hold:

1. ``below_threshold``: its nearest student is within ``threshold``;
2. ``ambiguous_second_student``: the second-nearest *student* is at least ``margin`` farther,
   and strictly farther (an exact tie is never decided by the order of the gallery, margin 0
   included);
3. ``contested_by_other_face``: no other face of the photo is within ``margin`` of that student,
   unless that other face is decisively someone else (rule 2 holds for it, and it passed 4);
4. ``low_quality:<why>``: the face passed the quality gate (``quality.py``); a face whose
   embedding is unusable (NaN, infinite or all zeros) is ``low_quality:embedding``: it is
   reviewed, names no one and contests no one, as it carries no evidence of who it is.

A face failing 1 is ``unknown``; failing 2-4 it ``needs_review`` and "points at" the students it
could be. There is no assignment step: a face only ever names its *own* nearest student, so a
student is never moved onto a weaker face because a stronger face took its first choice (the
one-to-one greedy assignment this replaces did exactly that, and put real people onto other
students). Rule 3 with any margin >= 0 also keeps a student to one face per photo.

Across photos (``attendance``) a student is present if any face named them, uncertain if only
faces needing review point at them, absent otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["cosine", "euclidean"]
Verdict = Literal["matched", "needs_review", "unknown"]
FloatArray = npt.NDArray[np.float32]
UNKNOWN = "unknown"

# The rule that decided a face, as reported per face in the results.
MATCHED = "matched"
BELOW_THRESHOLD = "below_threshold"
AMBIGUOUS = "ambiguous_second_student"
CONTESTED = "contested_by_other_face"
LOW_QUALITY = "low_quality"  # reported as "low_quality:<why>"
BROKEN_EMBEDDING = "embedding"  # the <why> of a face whose embedding is NaN, infinite or zero
CANDIDATES = 3  # nearest students reported per face, whatever ``top_k`` asks, to explain it
_EPS = 1e-9  # a gap of exactly the margin is decisive, whatever the float rounding of a - b


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
    return 1.0 - aff if metric == "cosine" else float(np.sqrt(max(-aff, 0.0))) + 0.0  # not -0.0


def distances(aff: FloatArray, metric: Metric) -> npt.NDArray[np.float64]:
    """A whole affinity matrix as distances in the card's metric (float64, for the rule)."""
    a = np.asarray(aff, dtype=np.float64)
    return 1.0 - a if metric == "cosine" else np.sqrt(np.maximum(-a, 0.0))


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
    """Per face (row), the student column assigned to it or -1; one-to-one, best pairs first.

    The rule before ``decide``, kept for the evaluation harness to compare against: it moves a
    student whose nearest face is taken onto the next face in reach, which ``decide`` never does.
    """
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
class Decision:
    """One face under the rule: the verdict, the rule that decided it, the student column it
    names (matched only), and the columns it could be (``needs_review`` only), nearest first."""

    verdict: Verdict
    rule: str
    student: int | None = None
    points_at: tuple[int, ...] = ()


def decide(
    dist: npt.ArrayLike,
    *,
    threshold: float,
    margin: float,
    quality: Sequence[str | None] | None = None,
) -> list[Decision]:
    """The rule of the module docstring over one photo's faces x students distance matrix.

    ``quality[f]`` is why face ``f`` failed the quality gate, or None when it passed.
    """
    d = np.asarray(dist, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"need a faces x students matrix, got shape {d.shape}")
    n_faces, n_students = d.shape
    why = list(quality) if quality is not None else [None] * n_faces
    if len(why) != n_faces:
        raise ValueError("one quality entry per face expected")
    if n_students == 0:
        return [
            Decision("needs_review", f"{LOW_QUALITY}:{q}")
            if q
            else Decision("unknown", BELOW_THRESHOLD)
            for q in why
        ]
    best = d.argmin(axis=1)  # the first of equals, like a stable sort
    d1 = d[np.arange(n_faces), best]
    d2 = np.partition(d, 1, axis=1)[:, 1] if n_students > 1 else np.full(n_faces, np.inf)
    # rules 1 and 2; ``d2 > d1``: a tie is never decisive, whatever the margin (0 included)
    with np.errstate(invalid="ignore"):  # inf - inf: a face with no finite distance, not clear
        clear = (d1 <= threshold) & (d2 - d1 >= margin - _EPS) & (d2 > d1)
    passed = np.array([q is None for q in why], dtype=bool)
    elsewhere = passed & clear  # with best != s: decisively another student

    def near(f: int) -> tuple[int, ...]:
        """The students face ``f`` could be: within the threshold, and within the margin of its
        best or tied with it (with margin 0 the best itself, which ``< margin`` alone omits)."""
        row = d[f]
        if not np.isfinite(d1[f]):
            return ()
        cols = np.flatnonzero((row <= threshold) & ((row - d1[f] < margin - _EPS) | (row <= d1[f])))
        return tuple(int(c) for c in cols[np.argsort(row[cols], kind="stable")])

    out: list[Decision] = []
    for f in range(n_faces):
        s = int(best[f])
        if not passed[f]:
            out.append(Decision("needs_review", f"{LOW_QUALITY}:{why[f]}", points_at=near(f)))
        elif d1[f] > threshold:
            out.append(Decision("unknown", BELOW_THRESHOLD))
        elif not clear[f]:
            out.append(Decision("needs_review", AMBIGUOUS, points_at=near(f)))
        else:
            # Another face decisively someone else does not contest; any other face does when
            # it is as near to s, or within the margin of it (a tie always contests).
            rivals = (d[:, s] - d1[f] < margin - _EPS) | (d[:, s] <= d1[f])
            rivals[f] = False
            if np.any(rivals & ~(elsewhere & (best != s))):
                out.append(Decision("needs_review", CONTESTED, points_at=(s,)))
            else:
                out.append(Decision("matched", MATCHED, student=s))
    return out


@dataclass(frozen=True)
class Candidate:
    student_id: str
    score: float


@dataclass(frozen=True)
class Match:
    """One face's outcome: the student it names (matched only), the distance to its nearest
    student, the rule that decided, its nearest candidates and who it could be (review only)."""

    student_id: str | None
    score: float | None
    candidates: tuple[Candidate, ...]
    verdict: Verdict = "unknown"
    rule: str = BELOW_THRESHOLD
    points_at: tuple[str, ...] = ()
    points_at_scores: tuple[float, ...] = ()  # distance to each of ``points_at``, same order


def match_faces(
    probes: FloatArray,
    gallery: FloatArray,
    offsets: npt.NDArray[np.intp],
    student_ids: Sequence[str],
    *,
    metric: Metric,
    threshold: float,
    margin: float = 0.0,
    quality: Sequence[str | None] | None = None,
    k: int = CANDIDATES,
) -> list[Match]:
    """Decide one photo's faces against a gallery (rows grouped by student, see ``per_student``).

    A probe row that is NaN, infinite or all zeros (an embedder that failed on the crop) is
    ``low_quality:embedding`` with no candidates; a NaN affinity (such a gallery row) counts as
    infinitely far, so a student's other templates still count.
    """
    _check_gallery(gallery, offsets, student_ids)
    p = np.asarray(probes, dtype=np.float32)
    if len(p) == 0:
        return []
    if p.ndim != 2:
        raise ValueError(f"need a faces x dim matrix of probes, got shape {p.shape}")
    why = list(quality) if quality is not None else [None] * len(p)
    if len(why) != len(p):
        raise ValueError("one quality entry per face expected")
    broken = ~(np.isfinite(p).all(axis=1) & (p != 0).any(axis=1))
    if broken.any():
        p = np.where(broken[:, None], np.float32(0.0), p)
        why = [BROKEN_EMBEDDING if b and q is None else q for q, b in zip(why, broken, strict=True)]
    aff = affinity(p, gallery, metric)
    aff[np.isnan(aff)] = -np.inf
    aff[broken] = -np.inf
    aff = per_student(aff, offsets)
    # Only students some face is within threshold + margin of can change a decision (a farther
    # second-best leaves the gap >= margin anyway), so the rule runs on those columns alone: a
    # few per face instead of a whole school's gallery.
    reach = np.flatnonzero((aff >= to_affinity(threshold + margin, metric)).any(axis=0))
    near = distances(aff[:, reach], metric)
    decisions = decide(near, threshold=threshold, margin=margin, quality=why)
    idx, vals = top_k(aff, max(k, 1))
    out = []
    for f, dec in enumerate(decisions):
        cands = (
            ()
            if broken[f]
            else tuple(
                Candidate(student_ids[int(j)], from_affinity(float(v), metric))
                for j, v in zip(idx[f], vals[f], strict=True)
            )
        )
        out.append(
            Match(
                None if dec.student is None else student_ids[int(reach[dec.student])],
                cands[0].score if cands else None,
                cands,
                dec.verdict,
                dec.rule,
                tuple(student_ids[int(reach[j])] for j in dec.points_at),
                tuple(float(near[f, j]) + 0.0 for j in dec.points_at),
            )
        )
    return out


def _check_gallery(
    gallery: FloatArray, offsets: npt.NDArray[np.intp], student_ids: Sequence[str]
) -> None:
    """Refuse a gallery whose columns would not be one per student: an id twice lets two faces
    of a photo name one student; an empty or misplaced group makes ``maximum.reduceat`` give a
    student another's rows."""
    if len(student_ids) != len(offsets):
        raise ValueError("one offset per student expected")
    if len(set(student_ids)) != len(student_ids):
        raise ValueError("a student id appears twice in the gallery")
    o = np.asarray(offsets)
    if len(o) and (o[0] != 0 or (np.diff(o) <= 0).any() or o[-1] >= len(gallery)):
        raise ValueError("offsets must start at 0 and give every student at least one row")


@dataclass(frozen=True)
class Sighting:
    """A face that names or points at a student: photo, face index in it, distance, rule."""

    photo: str
    face: int
    score: float
    rule: str = MATCHED


@dataclass(frozen=True)
class Attendance:
    present: dict[str, Sighting]  # best decisive sighting per student
    uncertain: dict[str, list[Sighting]]  # not present; faces needing review that point at them
    absent: list[str]
    unknown: list[tuple[str, int]]  # (photo, face index) of faces that matched nobody
    review: list[tuple[str, int, str]]  # (photo, face index, rule) of faces needing review
    not_on_roster: list[str] = field(default_factory=list)  # named students outside the roster


def attendance(
    roster: Sequence[str], photos: Sequence[tuple[str, Sequence[Match]]], metric: Metric
) -> Attendance:
    """Fold per-photo decisions into one mark per student: present, uncertain or absent."""
    best: dict[str, Sighting] = {}
    pointed: dict[str, list[Sighting]] = {}
    unknown: list[tuple[str, int]] = []
    review: list[tuple[str, int, str]] = []
    for photo, matches in photos:
        for i, m in enumerate(matches):
            if m.verdict == "matched" and m.student_id is not None and m.score is not None:
                prev = best.get(m.student_id)
                if prev is None or to_affinity(m.score, metric) > to_affinity(prev.score, metric):
                    best[m.student_id] = Sighting(photo, i, m.score)
            elif m.verdict == "needs_review":
                review.append((photo, i, m.rule))
                scores = {c.student_id: c.score for c in m.candidates}
                scores.update(zip(m.points_at, m.points_at_scores, strict=False))
                for sid in m.points_at:
                    score = scores.get(sid, m.score if m.score is not None else float("nan"))
                    pointed.setdefault(sid, []).append(Sighting(photo, i, score, m.rule))
            else:
                unknown.append((photo, i))
    on_roster = set(roster)
    present = {s: best[s] for s in roster if s in best}
    uncertain = {s: pointed[s] for s in roster if s not in best and s in pointed}
    absent = [s for s in roster if s not in best and s not in pointed]
    extra = sorted(s for s in best if s not in on_roster)
    return Attendance(present, uncertain, absent, unknown, review, extra)
