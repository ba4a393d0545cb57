"""Identify mode: photos -> detect -> align/embed -> match against the class gallery -> documents.

This module turns photos into the three result documents (``summary``, ``attendance``, ``photos``;
every ``score`` in them is a distance in the card's metric: lower is closer, a match is <=
``threshold``);
it does no Redis I/O itself (the gallery arrives loaded, results leave as plain dicts), so it is
tested with a small generated engine as well as the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job import annotate
from rollcall_job.gallery import Gallery, GalleryMeta
from rollcall_job.matcher import Match, Metric, attendance, match_faces
from rollcall_job.photos import DEFAULT_MAX_PIXELS, Photo, PhotoError, iter_read
from rollcall_job.protocols import Card, Engine, F, ImageBGR

log = logging.getLogger("rollcall_job.pipeline")


class BadInput(Exception):
    """The job's input cannot produce a meaningful result; retrying will not help."""


@dataclass(frozen=True)
class EmbedderSpec:
    """What the embedder's card says about comparing its embeddings."""

    meta: GalleryMeta
    threshold: float


def embedder_spec(card: Card, threshold: float | None = None) -> EmbedderSpec:
    if card.metric not in ("cosine", "euclidean") or card.embedding_dim is None:
        raise BadInput(f"embedder card {card.id!r} lacks a metric or an embedding dimension")
    chosen = threshold if threshold is not None else card.threshold
    if chosen is None:
        raise BadInput(f"embedder card {card.id!r} has no threshold and none was given")
    return EmbedderSpec(
        GalleryMeta(card.id, card.embedding_dim, cast(Metric, card.metric)), float(chosen)
    )


@dataclass(frozen=True)
class PhotoFaces:
    """One photo after detection and embedding (or the reason it has none)."""

    photo: Photo
    image: ImageBGR | None
    boxes: list[tuple[float, float, float, float]]
    det_scores: list[float]
    embeddings: npt.NDArray[np.float32]
    error: PhotoError | None = None


def _round_box(box: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in box]


def detect_and_embed(
    engine: Engine[F],
    photos: Sequence[Photo],
    *,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_photo: Callable[[], None] | None = None,
) -> Iterator[PhotoFaces]:
    """Read each photo and run the engine on it; unreadable photos yield an error record."""
    dim = engine.embedder_card.embedding_dim or 0
    empty = np.zeros((0, dim), np.float32)
    for photo, img in iter_read(list(photos), max_bytes=max_bytes, max_pixels=max_pixels):
        try:
            if isinstance(img, PhotoError):
                yield PhotoFaces(photo, None, [], [], empty, img)
                continue
            try:
                faces = engine.detect(img)
                emb = engine.embed(img, faces) if faces else empty
            except (cv2.error, ValueError) as e:  # a photo the engine cannot digest
                err = PhotoError("engine_failed", type(e).__name__)
                yield PhotoFaces(photo, None, [], [], empty, err)
                continue
            yield PhotoFaces(photo, img, [f.box for f in faces], [f.score for f in faces], emb)
        finally:
            if on_photo is not None:
                on_photo()


@dataclass
class IdentifyOutcome:
    documents: dict[str, Any]
    photos_ok: int = 0
    photos_failed: int = 0
    faces: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def identify(
    engine: Engine[F],
    photos: Sequence[Photo],
    gallery: Gallery,
    *,
    roster: Sequence[str],
    threshold: float,
    top_k: int = 1,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    annotate_dir: Path | None = None,
    on_photo: Callable[[], None] | None = None,
) -> IdentifyOutcome:
    """Match every face in ``photos`` against ``gallery`` and fold the matches into attendance.

    ``roster`` empty means "everyone in the gallery". Students on the roster with no enrolment are
    listed under ``not_enrolled``, not ``absent``: they could not have been recognised, so calling
    them absent would be a claim the job cannot back.
    """
    started = time.monotonic()
    metric = gallery.meta.metric
    roster_ids = list(dict.fromkeys(roster)) if roster else list(gallery.student_ids)
    photo_docs: list[dict[str, Any]] = []
    per_photo: list[tuple[str, list[Match]]] = []
    out = IdentifyOutcome(documents={})
    for pf in detect_and_embed(
        engine, photos, max_bytes=max_bytes, max_pixels=max_pixels, on_photo=on_photo
    ):
        if pf.error is not None:
            out.photos_failed += 1
            out.errors.append((pf.photo.name, pf.error.reason))
            photo_docs.append(
                {"photo": pf.photo.name, "error": pf.error.reason, "detail": pf.error.detail}
            )
            continue
        matches = match_faces(
            pf.embeddings,
            gallery.embeddings,
            gallery.offsets,
            gallery.student_ids,
            metric=metric,
            threshold=threshold,
            k=top_k,
        )
        out.photos_ok += 1
        out.faces += len(matches)
        per_photo.append((pf.photo.name, matches))
        photo_docs.append(
            {
                "photo": pf.photo.name,
                "faces": [
                    {
                        "box": _round_box(box),
                        "detection": round(ds, 4),
                        "student": m.student_id,
                        "score": None if m.score is None else round(m.score, 4),
                        "candidates": [
                            {"student": c.student_id, "score": round(c.score, 4)}
                            for c in m.candidates
                        ],
                    }
                    for box, ds, m in zip(pf.boxes, pf.det_scores, matches, strict=True)
                ],
            }
        )
        if annotate_dir is not None and pf.image is not None:
            labels = [
                annotate.Label(
                    box,
                    m.student_id if m.score is None else f"{m.student_id} {m.score:.2f}",
                    m.score is not None,
                )
                for box, m in zip(pf.boxes, matches, strict=True)
            ]
            annotate.write(annotate_dir, pf.photo.name, pf.image, labels)
    att = attendance(roster_ids, per_photo, metric)
    enrolled = set(gallery.student_ids)
    not_enrolled = [s for s in roster_ids if s not in enrolled]
    absent = [s for s in att.absent if s in enrolled]
    attendance_doc = {
        "present": [
            {"student": s, "photo": v.photo, "face": v.face, "score": round(v.score, 4)}
            for s, v in att.present.items()
        ],
        "absent": absent,
        "unknown": [{"photo": p, "face": i} for p, i in att.unknown],
        "not_enrolled": not_enrolled,
    }
    matched = out.faces - len(att.unknown)
    summary = {
        "mode": "identify",
        "model": gallery.meta.model_id,
        "metric": metric,
        "threshold": threshold,
        "images": len(photos),
        "errors": out.photos_failed,
        "faces": out.faces,
        "matched": matched,
        "unknown": len(att.unknown),
        "roster": len(roster_ids),
        "present": len(att.present),
        "absent": len(absent),
        "not_enrolled": len(not_enrolled),
        "seconds": round(time.monotonic() - started, 3),
        "failed": [{"photo": n, "reason": r} for n, r in out.errors],
    }
    out.documents = {"summary": summary, "attendance": attendance_doc, "photos": photo_docs}
    log.info(
        "identified %d faces in %d photos: %d present, %d absent, %d unknown",
        out.faces,
        out.photos_ok,
        len(att.present),
        len(absent),
        len(att.unknown),
    )
    return out
