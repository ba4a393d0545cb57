"""The face engine the pipeline uses: detect, align, embed, as the model cards say.

Everything model-specific (input size, colour order, normalisation, layout, template, metric)
comes from the cards in the model directory, so swapping the embedder for a school's own ONNX
model is a matter of files, not code. Each file a card records a sha256 for is checked before
its session opens (``ModelFileMismatch`` otherwise). Logs carry counts and timings only, never
face data.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from rollcall_job.align import warp_face
from rollcall_job.models.cache import models_dir
from rollcall_job.models.cards import (
    ARCFACE_TEMPLATE_112,
    EMBEDDER_CARD,
    ModelCard,
    detector_card_name,
    load_card,
)
from rollcall_job.models.detection import Detector
from rollcall_job.models.integrity import verify_card_files
from rollcall_job.quality import CROP as CANONICAL_CROP
from rollcall_job.runtime import CPU, Model, cpu_budget, load_model, pipelined_threads

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "ROLLCALL_MODEL_DIR"
# Faces per embedder run on CPU. A face's activations are ~1.6 MB at MobileFaceNet's widest layer,
# so a whole class photo in one run outgrows the cores' caches (one thread at load 7, per face:
# batch 2 9.2 ms, 6 10.1 ms, 12 11.6 ms). On idle cores, as a pod with its own CPU request has,
# a frame's six faces took 28.3/28.4 ms as one run against 33.7/34.4 ms in runs of 2 with two
# threads, and 44.4 against 41.7 ms with one (bench/bench_models.py). GPUs keep the requested batch.
CPU_EMBED_BATCH = 6


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: npt.NDArray[np.float32]  # (5, 2): left eye, right eye, nose, mouth left, right

    @property
    def size(self) -> float:
        """The shorter side of the box, the quantity the minimum face size limits."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceEngine:
    """Detector + embedder sessions built from two cards; thread-compatible, not thread-safe.

    The detector is any family behind the ``Detector`` protocol (RetinaFace by default, MTCNN,
    CenterFace); the engine only sees boxes, scores and five landmarks.
    """

    def __init__(
        self,
        detector_card: ModelCard,
        embedder_card: ModelCard,
        detector: Detector,
        embedder: Model,
        *,
        min_face_px: int = 40,
    ) -> None:
        if min_face_px < 12:
            raise ValueError("min_face_px below 12 is smaller than the detector's cell")
        self.detector_card = detector_card
        self.embedder_card = embedder_card
        self.min_face_px = min_face_px
        self._detector = detector
        self._embedder = embedder
        card = embedder_card
        assert card.input_size is not None and card.template is not None  # the card validates
        self._crop_size: tuple[int, int] = card.input_size
        self._template = card.template
        self._canonical = self._crop_size == CANONICAL_CROP and np.array_equal(
            np.asarray(card.template, np.float64), np.asarray(ARCFACE_TEMPLATE_112, np.float64)
        )
        # (x * scale - mean) / std as one multiply-add per value: x * gain - offset
        std = np.asarray(card.std, dtype=np.float64)
        self._gain = (card.scale / std).astype(np.float32)
        self._offset = (np.asarray(card.mean, dtype=np.float64) / std).astype(np.float32)
        self._channels = card.channels_from_bgr

    @property
    def embedding_dim(self) -> int:
        assert self.embedder_card.embedding_dim is not None
        return self.embedder_card.embedding_dim

    @property
    def providers(self) -> list[str]:
        return self._embedder.providers

    @property
    def crops_are_canonical(self) -> bool:
        """Whether ``align``'s crops are the quality gate's canonical crops (the 112x112 ArcFace
        template), so the gate measures the embedder's crops instead of warping its own."""
        return self._canonical

    @property
    def embedder(self) -> Model:
        """The embedder's session; its ``batch_size`` is how many faces one run takes."""
        return self._embedder

    def detect(self, image_bgr: npt.NDArray[np.uint8]) -> list[DetectedFace]:
        """Faces whose box's shorter side is at least ``min_face_px``, best score first."""
        found = self._detector.detect(image_bgr, self.min_face_px)
        faces = [
            DetectedFace(
                box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                score=float(s),
                landmarks=np.ascontiguousarray(m, dtype=np.float32),
            )
            for b, s, m in zip(found.boxes, found.scores, found.landmarks, strict=True)
        ]
        kept = [f for f in faces if f.size >= self.min_face_px]
        if len(kept) < len(faces):
            log.debug("dropped %d faces below %d px", len(faces) - len(kept), self.min_face_px)
        return sorted(kept, key=lambda f: -f.score)

    def align(
        self, image_bgr: npt.NDArray[np.uint8], faces: Sequence[DetectedFace]
    ) -> list[npt.NDArray[np.uint8]]:
        """BGR crops of the embedder's input size, landmarks moved onto its template."""
        return [warp_face(image_bgr, f.landmarks, self._template, self._crop_size) for f in faces]

    def embed(
        self, image_bgr: npt.NDArray[np.uint8], faces: Sequence[DetectedFace]
    ) -> npt.NDArray[np.float32]:
        """(len(faces), dim) embeddings, in the order of ``faces``."""
        return self.embed_aligned(self.align(image_bgr, faces))

    def embed_photos(
        self, photos: Sequence[tuple[npt.NDArray[np.uint8], Sequence[DetectedFace]]]
    ) -> list[npt.NDArray[np.float32]]:
        """Embeddings of several photos' faces in one batched run; one array per photo.

        One onnxruntime call over every face (in ``batch_size`` rows) costs less than a call per
        photo when photos hold a face or two (enrolment folders, close-ups).
        """
        crops = [c for image, faces in photos for c in self.align(image, faces)]
        vectors = self.embed_aligned(crops)
        bounds = np.cumsum([0, *(len(faces) for _, faces in photos)]).tolist()
        return [vectors[a:b] for a, b in itertools.pairwise(bounds)]

    def embed_aligned(self, crops: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Embeddings of BGR crops already aligned to the card (what ``align`` returns)."""
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        w, h = self._crop_size
        batch = np.stack([np.asarray(c, dtype=np.uint8) for c in crops])
        if batch.shape[1:] != (h, w, 3):
            raise ValueError(f"crops must be ({h}, {w}, 3) BGR, got {batch.shape[1:]}")
        out = self._embedder.run(self.prepare(batch))[0]
        return np.ascontiguousarray(out.reshape(len(crops), -1), dtype=np.float32)

    def prepare(self, batch_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """The embedder's input for (n, h, w, 3) aligned BGR crops, as the card normalises it.

        Written channel by channel straight into the card's colour order and layout: one pass
        instead of five whole-batch copies (a frame's six 112 px crops: 0.33 against 2.0 ms).
        """
        n, h, w, _ = batch_bgr.shape
        nchw = self.embedder_card.layout == "NCHW"
        out = np.empty((n, 3, h, w) if nchw else (n, h, w, 3), dtype=np.float32)
        for c, src in enumerate(self._channels):
            dst = out[:, c] if nchw else out[..., c]
            np.multiply(batch_bgr[..., src], self._gain[c], out=dst, casting="unsafe")
            dst -= self._offset[c]
        return out


def _input_shape(card: ModelCard, n: int) -> tuple[int, int, int, int]:
    assert card.input_size is not None
    w, h = card.input_size
    return (n, 3, h, w) if card.layout == "NCHW" else (n, h, w, 3)


def open_detector(
    card: ModelCard,
    model_dir: Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    spin: bool = False,
) -> Detector:
    """The card's detector family around its ONNX sessions (same providers as the embedder)."""
    verify_card_files(card, model_dir)

    def session(role: str) -> Model:
        return load_model(
            card.path(role, model_dir),
            providers=providers,
            threads=threads,
            batch_size=256,  # MTCNN's R-Net/O-Net candidates are tiny; batch them all
            spin=spin,
        )

    if card.family == "mtcnn":
        from rollcall_job.models.mtcnn import Mtcnn

        pnet, rnet, onet = session("pnet"), session("rnet"), session("onet")
        for model, size in ((rnet, 24), (onet, 48)):
            model.warm_up((1, size, size, 3))
        return Mtcnn(card, pnet.run, rnet.run, onet.run)
    if card.family == "retinaface":
        from rollcall_job.models.retinaface import RetinaFace

        return RetinaFace(card, session("model").run)
    if card.family == "centerface":
        from rollcall_job.models.centerface import CenterFace

        return CenterFace(card, session("model").run)
    raise ValueError(f"no decoder for detector family {card.family!r}")


def load_engine(
    model_dir: Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    batch_size: int = 32,
    min_face_px: int = 40,
    spin: bool = False,
    detector: str | None = None,
    detector_threads: int | None = None,
) -> FaceEngine:
    """Open ``detector.card.json`` (or ``detector-<family>.card.json`` when ``detector`` names a
    family) and ``embedder.card.json`` in ``model_dir`` and their models.

    Each session runs once before this returns, so the first photo is not slower. On CPU alone
    the embedder runs at most ``CPU_EMBED_BATCH`` faces at a time, whatever ``batch_size`` says.
    ``spin`` lets idle onnxruntime threads busy-wait (see ``runtime.session_options``).
    ``threads`` 0 (the job's default) sizes both sessions to the CPUs this pod may use
    (``runtime.pipelined_threads``), not to the node's cores as onnxruntime would; a number sets
    both; ``detector_threads`` overrides the detector's alone.
    """
    detector_card = load_card(model_dir / detector_card_name(detector))
    embedder_card = load_card(model_dir / EMBEDDER_CARD)
    if detector_card.kind != "detector" or embedder_card.kind != "embedder":
        raise ValueError("the detector / embedder cards describe the wrong kinds")
    verify_card_files(embedder_card, model_dir)  # the detector's, in open_detector
    det_threads, threads = (threads, threads) if threads > 0 else pipelined_threads(cpu_budget())
    det_threads = det_threads if detector_threads is None else detector_threads
    found = open_detector(
        detector_card, model_dir, providers=providers, threads=det_threads, spin=spin
    )
    embedder = load_model(
        embedder_card.path("model", model_dir),
        providers=providers,
        threads=threads,
        batch_size=batch_size,
        warm_up_shape=_input_shape(embedder_card, 1),
        spin=spin,
    )
    if embedder.providers == [CPU]:
        embedder.batch_size = min(batch_size, CPU_EMBED_BATCH)
    engine = FaceEngine(detector_card, embedder_card, found, embedder, min_face_px=min_face_px)
    # Warm the detector path too (its sessions, pyramid shapes) on a small blank frame.
    engine.detect(np.zeros((2 * min_face_px, 2 * min_face_px, 3), dtype=np.uint8))
    log.info(
        "face engine ready: detector=%s embedder=%s providers=%s",
        detector_card.id,
        embedder_card.id,
        ",".join(embedder.providers),
    )
    return engine


def default_model_dir() -> Path:
    """``$ROLLCALL_MODEL_DIR`` (the job image sets it), else where ``build.py`` writes."""
    if env := os.environ.get(MODEL_DIR_ENV):
        return Path(env)
    return models_dir()


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Decode a photo file to BGR (raises instead of returning None like cv2.imread)."""
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path.name}")
    return np.asarray(image, dtype=np.uint8)
