"""Enroll mode: one sub-folder of photos per student id -> one averaged embedding per student.

A photo is used only when it holds exactly one face of at least ``min_face_px``: a second face could
be anyone, and a tiny face embeds to noise (every embedder collapses below ~40 px). That face must
also pass the quality gate (``quality.py``: blur, pose, a mask...), or it is rejected as
``low_quality:<why>``: a template made from a masked or blurred photo would pull the wrong faces
near that student in every later roll call. Only when no
face is found is a second, finer detector (``small_faces``) asked, so a face that is there but too
small is reported as ``too_small`` rather than ``no_face``; it is not used for the main pass
because a finer pyramid also finds more false faces, which would reject good portraits. Averaging several photos per student smooths pose and light;
for cosine cards each embedding is L2-normalised before and after averaging, so every photo weighs
the same and the stored vector lives on the unit sphere the metric assumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rollcall_job import quality
from rollcall_job.matcher import LOW_QUALITY, Metric, l2_normalise
from rollcall_job.photos import DEFAULT_MAX_PIXELS, Photo, list_photos
from rollcall_job.pipeline import BadInput, detect_and_embed
from rollcall_job.protocols import Engine, F, ImageBGR

log = logging.getLogger("rollcall_job.enroll")
FloatArray = npt.NDArray[np.float32]


def student_photos(root: Path) -> dict[str, list[Photo]]:
    """Photos per student: every non-hidden sub-folder of ``root`` is a student id."""
    out: dict[str, list[Photo]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        out[d.name] = [Photo(f"{d.name}/{ph.name}", ph.path) for ph in list_photos(d)]
    return out


def average(embeddings: FloatArray, metric: Metric) -> FloatArray:
    """One template from several embeddings of the same person (see the module docstring)."""
    if metric == "cosine":
        mean: FloatArray = l2_normalise(embeddings).mean(axis=0, keepdims=True)
        unit: FloatArray = l2_normalise(mean)[0]
        return unit
    out: FloatArray = embeddings.mean(axis=0).astype(np.float32)
    return out


_GATE = quality.QualityGate()


@dataclass
class EnrollOutcome:
    students: dict[str, FloatArray]
    documents: dict[str, Any]
    photos_used: int
    photos_rejected: int


def enroll(
    engine: Engine[F],
    root: Path,
    *,
    metric: Metric,
    model_id: str,
    min_face_px: int,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    small_faces: Callable[[ImageBGR], int] | None = None,
    on_photo: Callable[[], None] | None = None,
    gate: quality.QualityGate | None = _GATE,
) -> EnrollOutcome:
    """Embed each student's usable photos and average them; report every photo not used and why."""
    started = time.monotonic()
    by_student = student_photos(root)
    if not by_student:
        raise BadInput("enroll mode needs one sub-folder of photos per student id")
    students: dict[str, FloatArray] = {}
    photo_docs: list[dict[str, Any]] = []
    report: dict[str, dict[str, Any]] = {}
    used_total = rejected_total = unreadable = 0
    for sid, photos in by_student.items():
        used: list[FloatArray] = []
        rejected: list[dict[str, str]] = []
        for pf in detect_and_embed(
            engine,
            photos,
            max_bytes=max_bytes,
            max_pixels=max_pixels,
            on_photo=on_photo,
            gate=gate,
        ):
            sizes = [min(b[2] - b[0], b[3] - b[1]) for b in pf.boxes]
            big = [i for i, s in enumerate(sizes) if s >= min_face_px]
            if pf.error is not None:
                reason = pf.error.reason
                unreadable += 1
            elif len(big) == 1 and pf.quality and pf.quality[big[0]] is not None:
                reason = f"{LOW_QUALITY}:{pf.quality[big[0]]}"
            elif len(big) == 1:
                used.append(pf.embeddings[big[0]])
                photo_docs.append(
                    {
                        "photo": pf.photo.name,
                        "student": sid,
                        "used": True,
                        "box": [round(float(v), 1) for v in pf.boxes[big[0]]],
                    }
                )
                continue
            elif len(big) > 1:
                reason = "several_faces"
            elif sizes or (
                small_faces is not None and pf.image is not None and small_faces(pf.image) > 0
            ):
                reason = "too_small"
            else:
                reason = "no_face"
            rejected.append({"photo": pf.photo.name, "reason": reason})
            photo_docs.append(
                {"photo": pf.photo.name, "student": sid, "used": False, "reason": reason}
            )
        if used:
            students[sid] = average(np.stack(used), metric)
        report[sid] = {"photos": len(photos), "used": len(used), "rejected": rejected}
        used_total += len(used)
        rejected_total += len(rejected)
    not_enrolled = [s for s in by_student if s not in students]
    summary = {
        "mode": "enroll",
        "model": model_id,
        "metric": metric,
        "students": len(by_student),
        "enrolled": len(students),
        "images": sum(len(p) for p in by_student.values()),
        "used": used_total,
        "rejected": rejected_total,
        "errors": unreadable,
        "seconds": round(time.monotonic() - started, 3),
        "not_enrolled": not_enrolled,
        "failed": [
            {"photo": d["photo"], "reason": d["reason"]} for d in photo_docs if not d["used"]
        ],
    }
    log.info(
        "enrolled %d of %d students from %d photos (%d rejected)",
        len(students),
        len(by_student),
        used_total,
        rejected_total,
    )
    return EnrollOutcome(
        students,
        {"summary": summary, "students": report, "photos": photo_docs},
        used_total,
        rejected_total,
    )
