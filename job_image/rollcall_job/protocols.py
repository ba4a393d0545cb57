"""What the pipeline needs from a face engine, as structural types.

The pipeline, enrolment and annotation code depend on these protocols rather than on
``rollcall_job.faces`` so they can be unit-tested with a tiny generated engine, and so any engine
that detects faces with boxes and landmarks and embeds them can be plugged in.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

ImageBGR = npt.NDArray[np.uint8]
Embeddings = npt.NDArray[np.float32]


class Card(Protocol):
    """The parts of an embedder's model card the pipeline reads (``models.cards.ModelCard``)."""

    @property
    def id(self) -> str: ...
    @property
    def metric(self) -> str | None: ...  # 'euclidean' | 'cosine'
    @property
    def threshold(self) -> float | None: ...  # same person when distance <= / similarity >= it
    @property
    def margin(self) -> float: ...  # ambiguity margin, a distance (``matcher.decide``)
    @property
    def embedding_dim(self) -> int | None: ...


class Face(Protocol):
    """One detected face: box (x1, y1, x2, y2), detector score, five landmarks (5, 2)."""

    @property
    def box(self) -> tuple[float, float, float, float]: ...
    @property
    def score(self) -> float: ...
    @property
    def landmarks(self) -> npt.NDArray[np.float32]: ...


F = TypeVar("F", bound=Face)


class Engine(Protocol[F]):
    """Detect faces in a BGR photo and embed them (one row per face, ``embedder_card.dim`` wide).

    Generic in the engine's own face type so ``faces.FaceEngine`` (returning ``DetectedFace``)
    satisfies ``Engine[DetectedFace]`` without casts.
    """

    @property
    def embedder_card(self) -> Card: ...
    @property
    def min_face_px(self) -> int: ...

    def detect(self, image_bgr: ImageBGR) -> list[F]: ...
    def embed(self, image_bgr: ImageBGR, faces: list[F]) -> Embeddings: ...
