"""The dlib -> ONNX converter computes what dlib's network computes.

Proof by an independent numpy forward pass (``dlib_reference``): on a small synthetic network
that has every layer kind, including dlib's zero-filled residual add of unequal shapes, and on
the real ResNet with real aligned face crops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from rollcall_job.faces import FaceEngine, load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models, fetch_dlib_weights
from rollcall_job.models.dlib_format import (
    AddPrev,
    Affine,
    Conv,
    DlibFormatError,
    DlibNet,
    Fc,
    InputRGB,
    Pool,
    Relu,
    Skip,
    Tag,
    load_dlib_net,
    parse_dlib_net,
)
from rollcall_job.models.dlib_onnx import INPUT_NAME, dlib_to_onnx
from rollcall_job.models.dlib_reference import reference_forward

TOLERANCE = 1e-4


def _run_onnx(net: DlibNet, rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(
        dlib_to_onnx(net).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    out = session.run(None, {INPUT_NAME: rgb.astype(np.float32)})[0]
    return np.asarray(out, dtype=np.float32)


def _synthetic_net(rng: np.random.Generator) -> DlibNet:
    """Every layer kind; a 10x10 input makes the stride-2 branch 4x4 and the pooled one 5x5."""

    def conv(c_in: int, c_out: int, k: int, stride: int, pad: int) -> Conv:
        w = rng.normal(0, 0.3, (c_out, c_in, k, k)).astype(np.float32)
        return Conv(w, rng.normal(0, 0.1, c_out).astype(np.float32), stride, pad)

    def affine(k: int) -> Affine:
        g = rng.uniform(0.5, 1.5, k).astype(np.float32)
        return Affine(g, rng.normal(0, 0.1, k).astype(np.float32))

    layers = (
        conv(3, 4, 3, 1, 1),
        affine(4),
        Relu(),
        Tag(1),
        conv(4, 6, 3, 2, 0),  # 10 -> 4, 4 -> 6 channels
        affine(6),
        Tag(2),
        Skip(1),
        Pool("avg", 2, 2, 0),  # 10 -> 5, still 4 channels
        AddPrev(2),  # zero-filled to 6 x 5 x 5
        Relu(),
        Pool("max", 3, 2, 0),  # 5 -> 2
        Pool("avg", 0, 1, 0),  # whole plane
        Fc(rng.normal(0, 0.5, (6, 5)).astype(np.float32), rng.normal(0, 0.1, 5).astype(np.float32)),
    )
    return DlibNet(InputRGB((120.0, 110.0, 100.0), 10), layers, 0.6)


def test_synthetic_network_onnx_matches_reference() -> None:
    rng = np.random.default_rng(3)
    net = _synthetic_net(rng)
    rgb = rng.integers(0, 256, (4, 10, 10, 3), dtype=np.uint8)
    expected = reference_forward(net, rgb)
    assert expected.shape == (4, 5)
    np.testing.assert_allclose(_run_onnx(net, rgb), expected, atol=TOLERANCE, rtol=0)


def test_zero_filled_residual_add_is_not_a_broadcast() -> None:
    """Guard the reference itself: the 5x5 pooled branch keeps its last row/column alone."""
    rng = np.random.default_rng(4)
    net = _synthetic_net(rng)
    cut = DlibNet(net.input, net.layers[:10], net.dist_thresh)  # up to the AddPrev
    rgb = rng.integers(0, 256, (1, 10, 10, 3), dtype=np.uint8)
    out = reference_forward(cut, rgb).reshape(1, 6, 5, 5)
    pooled = reference_forward(DlibNet(net.input, net.layers[:9], 0.6), rgb).reshape(1, 4, 5, 5)
    np.testing.assert_allclose(out[0, :4, 4, :], pooled[0, :, 4, :])  # row only in the pool
    np.testing.assert_allclose(out[0, 4:, 4, :], 0.0)  # channels only in the conv branch


# --- the real network --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_net(tmp_path_factory: pytest.TempPathFactory) -> DlibNet:
    return load_dlib_net(fetch_dlib_weights(tmp_path_factory.mktemp("dlib") / "net.dat"))


@pytest.fixture(scope="module")
def engine() -> Iterator[FaceEngine]:
    """The dlib card, selected by its id (it is no longer the default embedder)."""
    engine = load_engine(build_models() / "dlib-resnet-v1", threads=2)
    assert engine.embedder_card.id == "dlib-resnet-v1"
    yield engine


@pytest.mark.models
def test_real_network_structure(dlib_net: DlibNet) -> None:
    assert dlib_net.input.size == 150
    assert dlib_net.embedding_dim == 128
    assert dlib_net.dist_thresh == pytest.approx(0.6)
    convs = [layer for layer in dlib_net.layers if isinstance(layer, Conv)]
    assert len(convs) == 29  # 1 stem + 14 residual blocks of 2
    assert sum(isinstance(layer, AddPrev) for layer in dlib_net.layers) == 14


@pytest.mark.models
def test_real_network_onnx_matches_reference_on_face_crops(
    dlib_net: DlibNet, engine: FaceEngine
) -> None:
    crops = []
    for name in ("obama.jpg", "obama2.jpg", "biden.jpg", "t1.jpg"):
        image = read_image(photo(name))
        crops += engine.align(image, engine.detect(image))
    assert len(crops) >= 9
    bgr = np.stack(crops)
    expected = reference_forward(dlib_net, np.ascontiguousarray(bgr[..., ::-1]))
    got = engine.embed_aligned(crops)  # the built embedder.onnx through the engine
    diff = float(np.abs(got - expected).max())
    assert diff < TOLERANCE, diff


@pytest.mark.models
def test_truncated_or_altered_files_are_rejected(tmp_path: Path) -> None:
    data = fetch_dlib_weights(tmp_path / "net.dat").read_bytes()
    with pytest.raises(DlibFormatError):
        parse_dlib_net(data[: len(data) // 2])
    with pytest.raises(DlibFormatError):
        parse_dlib_net(data + b"\x00")
    with pytest.raises(DlibFormatError):
        parse_dlib_net(data.replace(b"con_4", b"con_9", 1))
