"""Identify mode: photos -> detect -> align/embed -> quality gate -> decide against the gallery.

This module turns photos into the three result documents (``summary``, ``attendance``, ``photos``;
every ``score`` in them is a distance in the card's metric: lower is closer, a match is <=
``threshold``). Each face is explained: its nearest students with their distances and the rule
that decided it (``matcher.decide``); students are present, uncertain (only faces needing a
person's review point at them), absent or not enrolled. It does no Redis I/O itself (the gallery
arrives loaded, results leave as plain dicts), so it is tested with a small generated engine as
well as the real one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Generic, Protocol, cast, runtime_checkable

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job import annotate, quality
from rollcall_job.balance import EmbedShare
from rollcall_job.gallery import Gallery, GalleryMeta, without
from rollcall_job.matcher import CANDIDATES, Match, Metric, attendance, match_faces
from rollcall_job.photos import DEFAULT_MAX_PIXELS, Photo, PhotoError, read_or_error
from rollcall_job.prefetch import prefetch_map
from rollcall_job.protocols import Card, Embeddings, Engine, F, Face, ImageBGR

log = logging.getLogger("rollcall_job.pipeline")


class BadInput(Exception):
    """The job's input cannot produce a meaningful result; retrying will not help."""


def no_gallery(class_code: str, gallery: str, model_id: str) -> BadInput:
    """The error of an identify job whose class has no gallery for its model, saying what to run.

    Galleries are kept per model (embeddings of two models are not comparable), so a new default
    model finds none until the class is enrolled again with it.
    """
    flag = "" if gallery == class_code else f" --gallery {gallery}"
    return BadInput(
        f"class {class_code!r} has no gallery {gallery!r} for model {model_id!r}: enrol the "
        f"class with this model first (`rollcall enroll --class {class_code}{flag} --claim <pvc> "
        "--sub-path <folder with one sub-folder of photos per student>`, or an RJ with mode: "
        "enroll over the enrolment photos), then run this job again"
    )


@dataclass(frozen=True)
class EmbedderSpec:
    """What the embedder's card says about comparing its embeddings."""

    meta: GalleryMeta
    threshold: float
    margin: float = 0.0


def embedder_spec(
    card: Card, threshold: float | None = None, margin: float | None = None
) -> EmbedderSpec:
    """The card's metric, threshold and margin; a threshold or margin given by the RJ wins."""
    if card.metric not in ("cosine", "euclidean") or card.embedding_dim is None:
        raise BadInput(f"embedder card {card.id!r} lacks a metric or an embedding dimension")
    chosen = threshold if threshold is not None else card.threshold
    if chosen is None:
        raise BadInput(f"embedder card {card.id!r} has no threshold and none was given")
    gap = margin if margin is not None else card.margin
    return EmbedderSpec(
        GalleryMeta(card.id, card.embedding_dim, cast(Metric, card.metric)),
        float(chosen),
        float(gap or 0.0),
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
    quality: list[str | None] = field(default_factory=list)  # per face: why it failed, or None


def _round_box(box: Sequence[float]) -> list[float]:
    return [round(float(v), 1) for v in box]


@runtime_checkable
class Aligning(Protocol):
    """An engine that exposes its alignment (``faces.FaceEngine``): the pipeline then aligns in
    the detect-ahead thread, off the embedder's, and the quality gate measures those crops when
    they are its canonical ones (one warp per face instead of two)."""

    @property
    def crops_are_canonical(self) -> bool: ...

    def align(self, image_bgr: ImageBGR, faces: Sequence[Any]) -> list[ImageBGR]: ...
    def embed_aligned(self, crops: Sequence[ImageBGR]) -> Embeddings: ...


@dataclass(frozen=True)
class _Detected(Generic[F]):
    """One photo after reading and detection, before embedding (``error``: why it has no faces;
    ``crops``: the embedder's aligned crops, when the engine aligns apart from embedding;
    ``early``: the embeddings of the first of them, which the detect-ahead thread took on)."""

    photo: Photo
    image: ImageBGR | None
    faces: list[F]
    quality: list[str | None]
    error: PhotoError | None = None
    crops: list[ImageBGR] | None = None
    early: Embeddings | None = None


def gate_verdicts(
    image: ImageBGR,
    faces: Sequence[Face],
    gate: quality.QualityGate,
    crops: Sequence[ImageBGR] | None = None,
) -> list[str | None]:
    """Each face's quality verdict; ``crops`` (canonical crops of ``faces``) spare the warps."""
    if crops is None:
        crops = [quality.canonical_crop(image, f.landmarks) for f in faces]
    boxes, scores = [f.box for f in faces], [f.score for f in faces]
    return quality.check_crops(crops, boxes, scores, [f.landmarks for f in faces], gate)


def _read_and_detect(
    engine: Engine[F],
    photo: Photo,
    *,
    max_bytes: int,
    max_pixels: int,
    gate: quality.QualityGate | None,
    share: EmbedShare | None = None,
) -> _Detected[F]:
    """Decode ``photo``, find its faces, align them when the engine allows (``Aligning``), judge
    their quality and, with a ``share``, embed the first faces its estimates give this thread;
    a photo the decoder, the detector or the embedder cannot digest becomes an error record."""
    started = time.thread_time()
    _, img = read_or_error(photo, max_bytes=max_bytes, max_pixels=max_pixels)
    if isinstance(img, PhotoError):
        return _Detected(photo, None, [], [], img)
    try:
        faces = engine.detect(img)
        crops = engine.align(img, faces) if isinstance(engine, Aligning) else None
        shared = crops if isinstance(engine, Aligning) and engine.crops_are_canonical else None
        verdicts: list[str | None] = (
            [None] * len(faces) if gate is None else gate_verdicts(img, faces, gate, shared)
        )
        early = None
        if share is not None and crops is not None and isinstance(engine, Aligning):
            share.saw_ahead(time.thread_time() - started)
            if k := share.faces_ahead(len(crops)):
                t0 = time.thread_time()
                early = engine.embed_aligned(crops[:k])
                share.saw_faces(k, time.thread_time() - t0)
    except (cv2.error, ValueError) as e:
        return _Detected(photo, None, [], [], PhotoError("engine_failed", type(e).__name__))
    return _Detected(photo, img, faces, verdicts, crops=crops, early=early)


def detect_and_embed(
    engine: Engine[F],
    photos: Sequence[Photo],
    *,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_photo: Callable[[], None] | None = None,
    gate: quality.QualityGate | None = None,
) -> Iterator[PhotoFaces]:
    """Read each photo and run the engine on it; unreadable photos yield an error record.

    Reading, detecting, aligning and gating photo N+1 (in ``prefetch_map``'s thread) overlaps
    embedding photo N: onnxruntime and OpenCV release the GIL, so the detector and the embedder
    run at once on a pod's own cores (bench/bench_models.py measures it against decoding ahead
    only). With an ``Aligning`` engine the detect-ahead thread also embeds the first faces of its
    photo, as many as ``balance.EmbedShare`` says make both threads' CPU equal (onnxruntime
    sessions may run from two threads at once). One photo ahead at most, so at most two photos
    are decoded at a time. Results come in the order of ``photos``.
    With a ``gate``, each face's quality verdict comes along (None: passed; else why not).
    """
    dim = engine.embedder_card.embedding_dim or 0
    empty = np.zeros((0, dim), np.float32)
    share = EmbedShare()

    def detected(photo: Photo) -> _Detected[F]:
        return _read_and_detect(
            engine, photo, max_bytes=max_bytes, max_pixels=max_pixels, gate=gate, share=share
        )

    def embed_rest(d: _Detected[F], crops: list[ImageBGR], engine: Aligning) -> Embeddings:
        done = 0 if d.early is None else len(d.early)
        t0 = time.thread_time()
        rest = engine.embed_aligned(crops[done:]) if done < len(crops) else empty
        share.saw_faces(len(crops) - done, time.thread_time() - t0)
        return rest if d.early is None else np.concatenate([d.early, rest])

    for d in prefetch_map(detected, list(photos), ahead=1):
        try:
            if d.error is not None or d.image is None:
                yield PhotoFaces(d.photo, None, [], [], empty, d.error)
                continue
            try:
                if not d.faces:
                    emb = empty
                elif d.crops is not None and isinstance(engine, Aligning):
                    emb = embed_rest(d, d.crops, engine)
                else:
                    emb = engine.embed(d.image, d.faces)
            except (cv2.error, ValueError) as e:  # a photo the engine cannot digest
                err = PhotoError("engine_failed", type(e).__name__)
                yield PhotoFaces(d.photo, None, [], [], empty, err)
                continue
            boxes, scores = [f.box for f in d.faces], [f.score for f in d.faces]
            yield PhotoFaces(d.photo, d.image, boxes, scores, emb, quality=d.quality)
        finally:
            if on_photo is not None:
                on_photo()


_GATE = quality.QualityGate()


@dataclass
class IdentifyOutcome:
    documents: dict[str, Any]
    decided: Decided  # what decides the photos again (``Decided.without``)
    photos_ok: int = 0
    photos_failed: int = 0
    faces: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def match_photo(
    pf: PhotoFaces, gallery: Gallery, *, threshold: float, margin: float, top_k: int = 1
) -> list[Match]:
    """Decide one photo's faces against ``gallery`` (pure: embeddings in, matches out)."""
    return match_faces(
        pf.embeddings,
        gallery.embeddings,
        gallery.offsets,
        gallery.student_ids,
        metric=gallery.meta.metric,
        threshold=threshold,
        margin=margin,
        quality=pf.quality or None,
        k=max(top_k, CANDIDATES),
    )


@dataclass(frozen=True)
class Decided:
    """Identify's decisions with what makes them again without the models or the pixels.

    Per photo its faces (boxes, detection scores, embeddings, quality verdicts; no image) or its
    error, and its matches; the gallery, the roster and the rule. ``outcome`` is a pure function
    of these, so ``without`` can decide every photo again as if some students had never been
    enrolled (students erased while the job ran: ``rollcall_job.recheck``) and the documents are
    rebuilt whole, leaving no field to keep an id. The cost: every face's embedding stays in
    memory until the job ends (4 x dim bytes: 768 B a face for the 192-d default card).
    """

    photos: tuple[PhotoFaces, ...]
    matches: tuple[tuple[Match, ...], ...]  # per photo; () for a photo with an error
    gallery: Gallery
    roster: tuple[str, ...]  # the students to mark (an empty roster given: the gallery's)
    threshold: float
    margin: float
    top_k: int
    images: int
    seconds: float
    erased: int = 0  # students dropped by ``without`` (summary ``erased_while_running``)

    def named(self) -> tuple[str, ...]:
        """The enrolled students the documents may name (every one of the gallery in memory)."""
        return self.gallery.student_ids

    def mentioned(self) -> tuple[str, ...]:
        """Every id the documents may name: the gallery's and the roster's (not enrolled too)."""
        return tuple(dict.fromkeys((*self.gallery.student_ids, *self.roster)))

    def without(self, erased: Collection[str]) -> Decided:
        """Every photo decided again against the gallery and roster less ``erased``; their
        templates leave memory with this object's gallery (``gallery.without`` copies). The
        documents then hold no trace of them, only their number."""
        dropped = len(set(erased).intersection(self.mentioned()))
        gallery = without(self.gallery, erased)
        matches = tuple(
            ()
            if pf.error is not None
            else tuple(
                match_photo(
                    pf, gallery, threshold=self.threshold, margin=self.margin, top_k=self.top_k
                )
            )
            for pf in self.photos
        )
        roster = tuple(s for s in self.roster if s not in erased)
        return replace(
            self, matches=matches, gallery=gallery, roster=roster, erased=self.erased + dropped
        )

    def outcome(self) -> IdentifyOutcome:
        """The three result documents and the counts (see the module docstring); built once, as
        the job asks for them again to publish and to report."""
        return self._built

    @cached_property
    def _built(self) -> IdentifyOutcome:
        return _build_outcome(self)

    def documents(self) -> dict[str, Any]:
        return self.outcome().documents


def _face_doc(box: Sequence[float], det: float, m: Match) -> dict[str, Any]:
    """One face in the results: where, the verdict, the rule that decided, nearest students."""
    return {
        "box": _round_box(box),
        "detection": round(det, 4),
        "decision": m.verdict,
        "rule": m.rule,
        "student": m.student_id,  # None unless matched
        "score": None if m.score is None else round(m.score, 4),  # distance to the nearest
        "candidates": [{"student": c.student_id, "score": round(c.score, 4)} for c in m.candidates],
        **({"pointsAt": list(m.points_at)} if m.verdict == "needs_review" else {}),
    }


def _label(box: tuple[float, float, float, float], m: Match) -> annotate.Label:
    """The annotated copy's caption: the name and distance, '?' and who it might be, or unknown."""
    if m.verdict == "matched" and m.score is not None:
        return annotate.Label(box, f"{m.student_id} {m.score:.2f}", annotate.Kind.MATCHED)
    if m.verdict == "needs_review":
        who = "/".join(m.points_at[:2])
        return annotate.Label(box, f"? {who}".rstrip(), annotate.Kind.REVIEW)
    return annotate.Label(box, "unknown", annotate.Kind.UNKNOWN)


def identify(
    engine: Engine[F],
    photos: Sequence[Photo],
    gallery: Gallery,
    *,
    roster: Sequence[str],
    threshold: float,
    margin: float,
    gate: quality.QualityGate | None = _GATE,
    top_k: int = 1,
    max_bytes: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    annotate_dir: Path | None = None,
    on_photo: Callable[[], None] | None = None,
) -> IdentifyOutcome:
    """Decide every face in ``photos`` against ``gallery`` and fold the decisions into attendance.

    ``roster`` empty means "everyone in the gallery". Students on the roster with no enrolment are
    listed under ``not_enrolled``, not ``absent``: they could not have been recognised, so calling
    them absent would be a claim the job cannot back. ``gate`` None skips the quality gate;
    ``top_k`` beyond ``matcher.CANDIDATES`` reports more candidates. The outcome's ``decided``
    keeps each photo's embeddings (not its pixels) so the photos can be decided again.
    """
    started = time.monotonic()
    kept: list[PhotoFaces] = []
    matched: list[tuple[Match, ...]] = []
    for pf in detect_and_embed(
        engine, photos, max_bytes=max_bytes, max_pixels=max_pixels, on_photo=on_photo, gate=gate
    ):
        kept.append(replace(pf, image=None))
        if pf.error is not None:
            matched.append(())
            continue
        matches = match_photo(pf, gallery, threshold=threshold, margin=margin, top_k=top_k)
        matched.append(tuple(matches))
        if annotate_dir is not None and pf.image is not None:
            labels = [_label(b, m) for b, m in zip(pf.boxes, matches, strict=True)]
            annotate.write(annotate_dir, pf.photo.name, pf.image, labels)
    decided = Decided(
        tuple(kept),
        tuple(matched),
        gallery,
        tuple(dict.fromkeys(roster)) if roster else gallery.student_ids,
        threshold,
        margin,
        top_k,
        len(photos),
        time.monotonic() - started,
    )
    out = decided.outcome()
    summary = out.documents["summary"]
    log.info(
        "identified %d faces in %d photos: %d present, %d uncertain, %d absent, %d faces to review,"
        " %d unknown",
        out.faces,
        out.photos_ok,
        summary["present"],
        summary["uncertain"],
        summary["absent"],
        summary["needs_review"],
        summary["unknown"],
    )
    return out


def _build_outcome(d: Decided) -> IdentifyOutcome:
    """``Decided.outcome``: the documents of the module docstring from the decisions alone."""
    metric = d.gallery.meta.metric
    photo_docs: list[dict[str, Any]] = []
    per_photo: list[tuple[str, Sequence[Match]]] = []
    out = IdentifyOutcome({}, d)
    for pf, matches in zip(d.photos, d.matches, strict=True):
        if pf.error is not None:
            out.photos_failed += 1
            out.errors.append((pf.photo.name, pf.error.reason))
            photo_docs.append(
                {"photo": pf.photo.name, "error": pf.error.reason, "detail": pf.error.detail}
            )
            continue
        out.photos_ok += 1
        out.faces += len(matches)
        per_photo.append((pf.photo.name, matches))
        faces = zip(pf.boxes, pf.det_scores, matches, strict=True)
        photo_docs.append(
            {"photo": pf.photo.name, "faces": [_face_doc(b, s, m) for b, s, m in faces]}
        )
    roster_ids = list(d.roster)
    att = attendance(roster_ids, per_photo, metric)
    enrolled = set(d.gallery.student_ids)
    not_enrolled = [s for s in roster_ids if s not in enrolled]
    absent = [s for s in att.absent if s in enrolled]
    attendance_doc = {
        "present": [
            {"student": s, "photo": v.photo, "face": v.face, "score": round(v.score, 4)}
            for s, v in att.present.items()
        ],
        "uncertain": [
            {
                "student": s,
                "faces": [
                    {"photo": v.photo, "face": v.face, "score": round(v.score, 4), "rule": v.rule}
                    for v in seen
                ],
            }
            for s, seen in att.uncertain.items()
        ],
        "absent": absent,
        "unknown": [{"photo": p, "face": i} for p, i in att.unknown],
        "needs_review": [{"photo": p, "face": i, "rule": r} for p, i, r in att.review],
        "not_enrolled": not_enrolled,
    }
    summary = {
        "mode": "identify",
        "model": d.gallery.meta.model_id,
        "metric": metric,
        "threshold": d.threshold,
        "margin": d.margin,
        "images": d.images,
        "errors": out.photos_failed,
        "faces": out.faces,
        "matched": out.faces - len(att.unknown) - len(att.review),
        "needs_review": len(att.review),
        "unknown": len(att.unknown),
        "roster": len(roster_ids),
        "present": len(att.present),
        "uncertain": len(att.uncertain),
        "absent": len(absent),
        "not_enrolled": len(not_enrolled),
        "seconds": round(d.seconds, 3),
        "failed": [{"photo": n, "reason": r} for n, r in out.errors],
        "erased_while_running": d.erased,
    }
    out.documents = {"summary": summary, "attendance": attendance_doc, "photos": photo_docs}
    return out
