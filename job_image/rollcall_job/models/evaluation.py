"""Evaluation maths for embedder cards: verification rates and a simulated roll call.

Pure numpy (and OpenCV for the synthetic views), no model or file I/O: ``bench/eval_faces.py``
feeds it embeddings of registry photos. Distances are in the card's metric, as everywhere else
(same person when distance <= threshold).

Two kinds of evidence, reported apart because they are not equally strong:

- *real* genuine pairs: one person in two different photos;
- *augmented* genuine pairs: a face against a synthetic view of itself (mirrored, darkened,
  shrunk to a class-photo size, or with a mask drawn over the lower face) — a weaker proxy.

Impostor pairs come free: any two faces in one group photo are different people.

The roll call follows issue #10: enrol k people of a group photo (from two synthetic views of
their faces), then (a) black them out and identify the rest, bare and masked (every enrolled
student is absent: any mark is a false present), (b) identify the photo with every face shrunk
and dimmed as far back in a class photo (every enrolled student is present: a missing mark is a
miss), (c) the same with masks on; each under the job's rule with and without the margin.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.matcher import (
    Metric,
    affinity,
    assign_greedy,
    decide,
    distances,
    per_student,
    to_affinity,
)

FloatArray = npt.NDArray[np.float32]
Image = npt.NDArray[np.uint8]
Landmarks = npt.NDArray[np.float32]

# --- verification ----------------------------------------------------------------------------


def pair_distances(a: FloatArray, b: FloatArray, metric: Metric) -> npt.NDArray[np.float64]:
    """Distance of each row of ``a`` to the same row of ``b``."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} vs {b.shape}")
    return np.array(
        [
            distances(affinity(x[None], y[None], metric), metric)[0, 0]
            for x, y in zip(a, b, strict=True)
        ]
    )


def tar_at_far(
    genuine: Sequence[float], impostor: Sequence[float], far: float
) -> tuple[float, float]:
    """(TAR, threshold): the share of genuine pairs accepted at the largest threshold that
    accepts at most ``far`` of the impostor pairs (with fewer than 1/far impostors: none)."""
    g = np.sort(np.asarray(genuine, dtype=np.float64))
    i = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(g) == 0 or len(i) == 0:
        raise ValueError("need genuine and impostor distances")
    allowed = int(np.floor(far * len(i)))  # impostors that may be accepted
    # Accept d <= t: the threshold sits just below the (allowed+1)-th smallest impostor.
    limit = i[allowed] if allowed < len(i) else np.inf
    threshold = float(np.nextafter(limit, -np.inf))
    return float(np.mean(g <= threshold)), threshold


def equal_error_rate(genuine: Sequence[float], impostor: Sequence[float]) -> float:
    """The rate where false rejects (genuine above t) equal false accepts (impostor <= t)."""
    g = np.asarray(genuine, dtype=np.float64)
    i = np.asarray(impostor, dtype=np.float64)
    if len(g) == 0 or len(i) == 0:
        raise ValueError("need genuine and impostor distances")
    best = (2.0, 1.0)
    for t in np.unique(np.concatenate([g, i, [-np.inf]])):
        frr, far = float(np.mean(g > t)), float(np.mean(i <= t))
        if abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2)
    return best[1]


# --- synthetic views ---------------------------------------------------------------------------

_MIRROR = [1, 0, 2, 4, 3]  # left/right eye and mouth corners swap in a mirror image


def flip(image: Image, landmarks: Landmarks) -> tuple[Image, Landmarks]:
    """The mirror image; the landmarks follow (and keep their left/right roles)."""
    w = image.shape[1]
    out = np.ascontiguousarray(image[:, ::-1])
    pts = landmarks.astype(np.float32).copy()
    pts[:, 0] = (w - 1) - pts[:, 0]
    return out, pts[_MIRROR]


def darken(image: Image, landmarks: Landmarks, gain: float = 0.4) -> tuple[Image, Landmarks]:
    """A dim room: every pixel times ``gain``."""
    out = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return out, landmarks.astype(np.float32).copy()


def shrink(image: Image, landmarks: Landmarks, eye_px: float = 16.0) -> tuple[Image, Landmarks]:
    """The photo scaled so the eyes are ``eye_px`` apart (a 40-50 px face, as far back in a
    class photo), then blurred back up; the crop then comes from what is left of the face."""
    eyes = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    factor = min(1.0, eye_px / max(eyes, 1e-6))
    if factor >= 1.0:
        return image.copy(), landmarks.astype(np.float32).copy()
    h, w = image.shape[:2]
    small = cv2.resize(
        image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA
    )
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(out, dtype=np.uint8), landmarks.astype(np.float32).copy()


def mask_polygon(landmarks: Landmarks) -> npt.NDArray[np.int32]:
    """A surgical-mask outline in image pixels: from the bridge of the nose to under the chin,
    cheek to cheek, in the face's own frame (eye line = x axis)."""
    le, re, nose, ml, mr = (landmarks[i].astype(np.float64) for i in range(5))
    eye_c, mouth_c = (le + re) / 2, (ml + mr) / 2
    ex = (re - le) / max(float(np.linalg.norm(re - le)), 1e-6)  # along the eyes
    ey = np.array([-ex[1], ex[0]])  # down the face
    if float(np.dot(mouth_c - eye_c, ey)) < 0:
        ey = -ey
    span = float(np.linalg.norm(re - le))
    drop = float(np.dot(mouth_c - eye_c, ey))
    top = float(np.dot(nose - eye_c, ey)) - 0.35 * drop
    chin = drop * 1.75
    cx = float(np.dot(nose - eye_c, ex))
    frame = [
        (cx - 1.05 * span, top + 0.1 * drop),
        (cx, top - 0.05 * drop),
        (cx + 1.05 * span, top + 0.1 * drop),
        (cx + 0.95 * span, chin - 0.3 * drop),
        (cx + 0.4 * span, chin),
        (cx - 0.4 * span, chin),
        (cx - 0.95 * span, chin - 0.3 * drop),
    ]
    pts = [eye_c + u * ex + v * ey for u, v in frame]
    return np.round(np.array(pts)).astype(np.int32)


MASK_COLOURS_BGR = ((235, 206, 135), (245, 245, 245), (40, 40, 40))  # light blue, white, black


def mask(
    image: Image, landmarks: Landmarks, colour: tuple[int, int, int] = MASK_COLOURS_BGR[0]
) -> tuple[Image, Landmarks]:
    """The face with a flat-coloured mask over nose and mouth; landmarks stay where they were
    (the detector saw the face before; this tests the embedder, not the detector)."""
    out = image.copy()
    cv2.fillPoly(out, [mask_polygon(landmarks)], colour, lineType=cv2.LINE_AA)
    return out, landmarks.astype(np.float32).copy()


def black_out(image: Image, boxes: Sequence[tuple[float, float, float, float]]) -> Image:
    """The photo with each box (grown by a quarter each way) painted black: people removed."""
    out = image.copy()
    h, w = image.shape[:2]
    for x1, y1, x2, y2 in boxes:
        gx, gy = (x2 - x1) * 0.25, (y2 - y1) * 0.25
        a, b = max(int(x1 - gx), 0), max(int(y1 - gy), 0)
        c, d = min(int(np.ceil(x2 + gx)), w), min(int(np.ceil(y2 + gy)), h)
        out[b:d, a:c] = 0
    return out


# --- the roll call -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One face's outcome under a rule: a student column, -1 (unknown) or -2 (uncertain)."""

    student: int
    distance: float | None


UNKNOWN, UNCERTAIN = -1, -2


def decide_with_margin(
    dist: npt.NDArray[np.float64], threshold: float, margin: float
) -> list[Decision]:
    """Per face (row of a faces x students distance matrix): the job's own rule
    (``matcher.decide``, without the quality gate, so that cards differ only by their embedder).

    A face names its nearest student when within ``threshold``, the second-nearest student is at
    least ``margin`` farther and no other face contests that student; otherwise it needs review
    (uncertain here), or is unknown when nothing is within the threshold.
    """
    verdicts = decide(dist, threshold=threshold, margin=margin)
    return [
        Decision(d.student, float(dist[f].min()))
        if d.verdict == "matched" and d.student is not None
        else Decision(UNCERTAIN if d.verdict == "needs_review" else UNKNOWN, None)
        for f, d in enumerate(verdicts)
    ]


def decide_greedy(
    dist: npt.NDArray[np.float64], threshold: float, metric: Metric
) -> list[Decision]:
    """Today's rule (``matcher.assign_greedy``): one-to-one greedy assignment under the threshold,
    no margin: a student taken by a nearer face moves to the next face still within reach."""
    aff = np.array([[to_affinity(float(d), metric) for d in row] for row in dist], dtype=np.float32)
    aff = aff.reshape(dist.shape)
    chosen = assign_greedy(aff, to_affinity(threshold, metric))
    return [
        Decision(s, float(dist[f, s])) if s >= 0 else Decision(UNKNOWN, None)
        for f, s in enumerate(chosen)
    ]


def distance_matrix(
    probes: FloatArray, gallery: FloatArray, offsets: npt.NDArray[np.intp], metric: Metric
) -> npt.NDArray[np.float64]:
    """Faces x students distances, each student's nearest gallery row (rows grouped by student)."""
    return distances(per_student(affinity(probes, gallery, metric), offsets), metric)


@dataclass(frozen=True)
class Trial:
    """One identify run: faces x students distances, and which face (if any) each student is."""

    name: str
    dist: npt.NDArray[np.float64]
    truth: tuple[int, ...]  # per student column: the face row that is that student, or -1


@dataclass(frozen=True)
class Tally:
    """Roll-call outcomes summed over trials."""

    absent: int = 0  # enrolled students not in the photo
    false_present: int = 0  # ... marked present
    present: int = 0  # enrolled students in the photo
    missed: int = 0  # ... not marked present (unknown or uncertain)
    wrong_face: int = 0  # ... marked present through another person's face
    uncertain_faces: int = 0  # faces the rule left as "not sure"

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[int, ...]:
        return (
            self.absent,
            self.false_present,
            self.present,
            self.missed,
            self.wrong_face,
            self.uncertain_faces,
        )

    @property
    def false_present_rate(self) -> float:
        return self.false_present / self.absent if self.absent else 0.0

    @property
    def missed_rate(self) -> float:
        return self.missed / self.present if self.present else 0.0


def score_trial(trial: Trial, decisions: Sequence[Decision]) -> Tally:
    """Count one trial's marks against the truth."""
    marked = {d.student: f for f, d in enumerate(decisions) if d.student >= 0}
    t = Tally(uncertain_faces=sum(d.student == UNCERTAIN for d in decisions))
    for student, face in enumerate(trial.truth):
        got = marked.get(student)
        if face < 0:
            t += Tally(absent=1, false_present=int(got is not None))
        elif got is None:
            t += Tally(present=1, missed=1)
        else:
            t += Tally(present=1, wrong_face=int(got != face))
    return t


def run_rule(
    trials: Sequence[Trial], threshold: float, margin: float | None, metric: Metric
) -> Tally:
    """All trials under one rule: ``margin`` None is today's greedy rule, else the margin rule."""
    total = Tally()
    for trial in trials:
        if margin is None:
            decisions = decide_greedy(trial.dist, threshold, metric)
        else:
            decisions = decide_with_margin(trial.dist, threshold, margin)
        total += score_trial(trial, decisions)
    return total


def choose_operating_point(
    trials: Sequence[Trial],
    thresholds: Sequence[float],
    margins: Sequence[float],
    metric: Metric,
) -> tuple[float, float, Tally]:
    """The (threshold, margin) with no false present and fewest misses on ``trials``.

    Among ties the larger margin and then the smaller threshold win (the safer side). Raises
    when no point is free of false presents.
    """
    best: tuple[tuple[int, float, float], float, float, Tally] | None = None
    for t, m in itertools.product(thresholds, margins):
        tally = run_rule(trials, t, m, metric)
        if tally.false_present or tally.wrong_face:
            continue
        key = (tally.missed, -m, t)
        if best is None or key < best[0]:
            best = (key, t, m, tally)
    if best is None:
        raise ValueError("no threshold/margin on the grid avoids every false present")
    return best[1], best[2], best[3]
