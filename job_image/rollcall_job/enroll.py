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
import os
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from rollcall_contract.model import IDENT, IDENT_MAX_LENGTH
from rollcall_job import quality
from rollcall_job.matcher import LOW_QUALITY, Metric, l2_normalise
from rollcall_job.photos import DEFAULT_MAX_PIXELS, Photo, list_photos
from rollcall_job.pipeline import BadInput, detect_and_embed
from rollcall_job.protocols import Engine, F, ImageBGR

log = logging.getLogger("rollcall_job.enroll")
FloatArray = npt.NDArray[np.float32]
# Why a folder's photos were not used when its name is no student id (see ``valid_student_id``).
INVALID_ID = "invalid_student_id"


def student_photos(root: Path) -> dict[str, list[Photo]]:
    """Photos per student: every non-hidden sub-folder of ``root`` is a student id (its name with
    any bytes that are not UTF-8 as ``\\xNN``, so it can be reported; ``valid_student_id``
    says whether it may be enrolled)."""
    out: dict[str, list[Photo]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        sid = os.fsencode(d.name).decode("utf-8", "backslashreplace")
        out[sid] = [Photo(f"{sid}/{ph.name}", ph.path) for ph in list_photos(d)]
    return out


def valid_student_id(sid: str) -> bool:
    """Whether a folder name is a student id a roster can name (``model.IDENT``, <= 64): any other
    would be enrolled under a name no attendance job could ask for."""
    return len(sid) <= IDENT_MAX_LENGTH and re.fullmatch(IDENT, sid) is not None


def average(embeddings: FloatArray, metric: Metric) -> FloatArray:
    """One template from several embeddings of the same person (see the module docstring)."""
    if metric == "cosine":
        mean: FloatArray = l2_normalise(embeddings).mean(axis=0, keepdims=True)
        unit: FloatArray = l2_normalise(mean)[0]
        return unit
    out: FloatArray = embeddings.mean(axis=0).astype(np.float32)
    return out


_GATE = quality.QualityGate()


@dataclass(frozen=True)
class StudentVerdicts:
    """One student's folder, decided: every photo's verdict (``used`` or why not) in order."""

    student: str
    photos: tuple[dict[str, Any], ...]
    enrolled: bool

    def used(self) -> int:
        return sum(1 for d in self.photos if d["used"])

    def rejected(self) -> list[dict[str, str]]:
        return [{"photo": d["photo"], "reason": d["reason"]} for d in self.photos if not d["used"]]


@dataclass(frozen=True)
class Enrolled:
    """An enrol job's result documents as a pure function of its photo verdicts, so they can be
    built again without a student erased while the job ran (``recheck.publish_checked``).

    ``held``: the students the gallery held when the job began; ``written``: those this job's put
    wrote. Together they are who the documents name that an erase can have removed a template of
    (``named``, checked against the gallery); every folder is checked against the erase
    tombstones (``mentioned``): an erase that found no template, as of a student enrolled for the
    first time, leaves one. ``without`` drops erased students' folders
    entirely: the documents are those of a job never given them, plus ``erased_while_running``
    (a count, never an id).
    """

    verdicts: tuple[StudentVerdicts, ...]
    model_id: str
    metric: Metric
    seconds: float
    unreadable: frozenset[str] = frozenset()  # photo names whose file could not be read
    held: frozenset[str] = frozenset()
    written: frozenset[str] = frozenset()
    erased: int = 0
    _docs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def named(self) -> Sequence[str]:
        """Students held at the start or written by this job that the documents name."""
        touched = self.held | self.written
        return [v.student for v in self.verdicts if v.student in touched]

    def mentioned(self) -> Sequence[str]:
        """Every student whose folder was submitted: the documents name each (enrolled or not)."""
        return [v.student for v in self.verdicts]

    def without(self, erased: Collection[str]) -> Self:
        gone = set(erased)
        kept = tuple(v for v in self.verdicts if v.student not in gone)
        dropped = len(self.verdicts) - len(kept)
        return replace(
            self,
            verdicts=kept,
            written=self.written - gone,
            held=self.held - gone,
            erased=self.erased + dropped,
            _docs={},
        )

    def documents(self) -> dict[str, Any]:
        """The result documents (built once: the job publishes and reports them)."""
        if not self._docs:
            self._docs.update(self._build())
        return self._docs

    def _build(self) -> dict[str, Any]:
        photo_docs = [d for v in self.verdicts for d in v.photos]
        failed = [{"photo": d["photo"], "reason": d["reason"]} for d in photo_docs if not d["used"]]
        summary = {
            "mode": "enroll",
            "model": self.model_id,
            "metric": self.metric,
            "students": len(self.verdicts),
            "enrolled": sum(1 for v in self.verdicts if v.enrolled),
            "images": len(photo_docs),
            "used": sum(v.used() for v in self.verdicts),
            "rejected": len(failed),
            "errors": sum(1 for d in photo_docs if d["photo"] in self.unreadable),
            "seconds": self.seconds,
            "not_enrolled": [v.student for v in self.verdicts if not v.enrolled],
            "failed": failed,
            "erased_while_running": self.erased,
        }
        report = {
            v.student: {"photos": len(v.photos), "used": v.used(), "rejected": v.rejected()}
            for v in self.verdicts
        }
        return {"summary": summary, "students": report, "photos": photo_docs}


@dataclass
class EnrollOutcome:
    students: dict[str, FloatArray]
    enrolled: Enrolled
    photos_used: int
    photos_rejected: int

    @property
    def documents(self) -> dict[str, Any]:
        return self.enrolled.documents()


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
    verdicts: list[StudentVerdicts] = []
    unreadable: set[str] = set()
    for sid, photos in by_student.items():
        used: list[FloatArray] = []
        photo_docs: list[dict[str, Any]] = []
        if not valid_student_id(sid):  # reported, never embedded nor written
            for ph in photos:
                photo_docs.append(
                    {"photo": ph.name, "student": sid, "used": False, "reason": INVALID_ID}
                )
                if on_photo is not None:
                    on_photo()
            verdicts.append(StudentVerdicts(sid, tuple(photo_docs), False))
            continue
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
                unreadable.add(pf.photo.name)
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
            photo_docs.append(
                {"photo": pf.photo.name, "student": sid, "used": False, "reason": reason}
            )
        if used:
            students[sid] = average(np.stack(used), metric)
        verdicts.append(StudentVerdicts(sid, tuple(photo_docs), bool(used)))
    result = Enrolled(
        tuple(verdicts),
        model_id,
        metric,
        round(time.monotonic() - started, 3),
        frozenset(unreadable),
    )
    used_total = sum(v.used() for v in verdicts)
    rejected_total = sum(len(v.photos) for v in verdicts) - used_total
    log.info(
        "enrolled %d of %d students from %d photos (%d rejected)",
        len(students),
        len(by_student),
        used_total,
        rejected_total,
    )
    return EnrollOutcome(students, result, used_total, rejected_total)
