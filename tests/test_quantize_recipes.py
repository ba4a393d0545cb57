"""Quantisation recipes (``quantize.py``): which nodes form each group of a MobileFaceNet-like
graph, and PReLU equalisation, which must keep the float function while evening channel ranges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rollcall_job.models import assets, build
from rollcall_job.models.build import (
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    SELECTABLE_EMBEDDERS,
    build_models,
)
from rollcall_job.models.mobilefacenet import fetch_tflite, tflite_to_onnx
from rollcall_job.models.quantize import (
    INT8_RECIPES,
    NodeGroup,
    Recipe,
    calibration_inputs,
    equalisation_scales,
    equalise_prelu,
    excluded_nodes,
    node_groups,
    quantize_static_int8,
)
from test_eval_faces import run_harness

C = 4


def _net(residual_reads_prelu: bool) -> onnx.ModelProto:
    """c0 3x3 -> PReLU p1 -> depthwise 3x3 -> PReLU p2 -> dense 1x1 -> Add (residual) -> head.

    The residual Add reads c0's output, or p1's when ``residual_reads_prelu``. Slopes make one
    channel of each PReLU far wider than the others, as MobileFaceNet's do.
    """
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def conv(name: str, x: str, shape: tuple[int, ...], group: int = 1, pad: int = 0) -> str:
        w = rng.normal(0, 0.5, shape).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.1, shape[0]).astype(np.float32), f"{name}_b")
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w", f"{name}_b"],
                [name],
                name=name,
                group=group,
                pads=[pad] * 4,
            )
        )
        return name

    def prelu(name: str, x: str, slopes: list[float]) -> str:
        s = np.asarray(slopes, dtype=np.float32).reshape(C, 1, 1, 1)
        nodes.append(helper.make_node("Relu", [x], [f"{name}_r"], name=f"{name}_relu"))
        for part, w, src in (("pos", 1 - s, f"{name}_r"), ("lin", s, x)):
            inits.append(numpy_helper.from_array(w, f"{name}_{part}_w"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [src, f"{name}_{part}_w"],
                    [f"{name}_{part}"],
                    name=f"{name}_{part}",
                    group=C,
                )
            )
        nodes.append(helper.make_node("Add", [f"{name}_lin", f"{name}_pos"], [name], name=name))
        return name

    c0 = conv("c0", "x", (C, 3, 3, 3), pad=1)
    p1 = prelu("p1", c0, [0.1, 0.2, 8.0, 0.25])
    dw = conv("dw", p1, (C, 1, 3, 3), group=C, pad=1)
    p2 = prelu("p2", dw, [0.3, 6.0, 0.1, 0.2])
    dense = conv("dense", p2, (C, C, 1, 1))
    skip = p1 if residual_reads_prelu else c0
    nodes.append(helper.make_node("Add", [dense, skip], ["res"], name="res"))
    conv("head", "res", (2, C, 1, 1))
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("head", TensorProto.FLOAT, ["n", 2, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    ("group", "want"),
    [
        ("first", ["c0"]),
        ("prelu", ["p1_pos", "p1_lin", "p1", "p2_pos", "p2_lin", "p2"]),
        ("residual", ["res"]),
        ("head", ["head"]),
    ],
)
def test_node_groups_follow_the_graph_structure(group: NodeGroup, want: list[str]) -> None:
    assert sorted(node_groups(_net(False))[group]) == sorted(want)


def test_excluded_nodes_are_the_groups_in_graph_order() -> None:
    assert excluded_nodes(_net(False), ("head", "first")) == ["c0", "head"]


@pytest.mark.parametrize(
    ("act", "weight", "alpha", "want"),
    [
        ([2.0, 8.0, 4.0], None, 0.5, [0.25, 1.0, 0.5]),  # depthwise: all to the widest
        ([0.0, 8.0], None, 0.5, [1.0, 1.0]),  # an empty channel keeps 1
        ([4.0, 1.0], [1.0, 1.0], 0.5, [2**0.5, 2**-0.5]),  # sqrt of the range ratio, mean 1
        ([1.0, 1.0], [4.0, 1.0], 0.5, [2**-0.5, 2**0.5]),  # wide weights: less tensor moved
        ([4.0, 1.0], [1.0, 1.0], 1.0, [2.0, 0.5]),  # alpha 1: the activations alone
    ],
)
def test_equalisation_scales(
    act: list[float], weight: list[float] | None, alpha: float, want: list[float]
) -> None:
    w = None if weight is None else np.asarray(weight, dtype=np.float32)
    got = equalisation_scales(np.asarray(act, dtype=np.float32), w, alpha)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _run(
    model: onnx.ModelProto, x: np.ndarray, outputs: list[str] | None = None
) -> list[np.ndarray]:
    """``model``'s outputs (or the named tensors) for ``x``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if outputs is not None:
        del probe.graph.output[:]
        probe.graph.output.extend(helper.make_empty_tensor_value_info(o) for o in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return [np.asarray(v) for v in session.run(outputs, feed)]


def _spread(t: np.ndarray) -> float:
    """Widest channel's range over the narrowest's."""
    r = np.abs(t).max(axis=(0, 2, 3))
    return float(r.max() / r.min())


@pytest.mark.parametrize(
    ("residual_reads_prelu", "p1_evened"),
    [(False, True), (True, False)],  # a PReLU read by an Add cannot move its scale
)
def test_equalised_prelus_keep_the_function_and_even_their_channels(
    residual_reads_prelu: bool, p1_evened: bool
) -> None:
    model = _net(residual_reads_prelu)
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    out = equalise_prelu(model, x)
    (want, p1, p2), (got, q1, q2) = (_run(m, x, ["head", "p1", "p2"]) for m in (model, out))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert _spread(p1) > 4 and _spread(p2) > 4  # the slopes made uneven channels
    if p1_evened:
        assert _spread(q1) == pytest.approx(1.0, abs=1e-5)  # read by a depthwise conv only
    else:
        np.testing.assert_array_equal(q1, p1)
    assert _spread(q2) < _spread(p2) / 2  # read by a dense conv: balanced against its weights


def test_equalisation_brings_the_int8_model_nearer_the_float_one() -> None:
    model = _net(False)
    rng = np.random.default_rng(2)
    calibration = rng.normal(0, 1, (32, 3, 8, 8)).astype(np.float32)
    x = rng.normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    (want,) = _run(model, x, ["head"])
    errors = []
    for recipe in (Recipe(), Recipe(equalise=0.5)):
        (got,) = _run(quantize_static_int8(model, calibration, recipe), x, ["head"])
        errors.append(float(np.abs(got - want).mean()))
    assert errors[1] < 0.8 * errors[0], errors  # measured 0.22 against 0.32


def test_every_int8_card_has_a_recipe_and_only_v2_is_shipped_beside_the_default() -> None:
    """v2 is selectable by spec.model (CPU-only clusters); v1 loses masked students: eval only."""
    int8 = [card_id for card_id in EMBEDDERS if "int8" in card_id]
    assert sorted(int8) == sorted(INT8_RECIPES)
    for card_id in int8:
        card = EMBEDDERS[card_id]()
        assert card.id == card_id and card_id != DEFAULT_EMBEDDER
    assert [c for c in int8 if c in SELECTABLE_EMBEDDERS] == ["mobilefacenet-sirius-int8-v2"]


def test_the_v2_recipe_keeps_the_real_embedder_near_the_float_one(tmp_path: Path) -> None:
    """On MobileFaceNet itself, over its calibration crops: v1's recipe drifts (0.136 mean cosine
    distance when measured), v2's stays close (0.02)."""
    folder = build_models()
    tflite = fetch_tflite(tmp_path / "mobilefacenet.tflite")
    model = tflite_to_onnx(tflite, "two-branch")  # what build.py quantises
    x = calibration_inputs(folder)
    (want,) = _run(model, x)
    drift = {}
    for card_id, recipe in INT8_RECIPES.items():
        (got,) = _run(quantize_static_int8(model, x, recipe), x)
        cosine = (
            np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        )
        drift[card_id] = float(np.mean(1 - cosine))
    assert (
        drift["mobilefacenet-sirius-int8-v2"] < 0.05 < 0.1 < drift["mobilefacenet-sirius-int8-v1"]
    ), drift


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("options", [(), ("--unfused",)], ids=["int8-kernels", "graph-as-written"])
def test_the_v2_card_decides_as_well_as_the_float_one(
    tmp_path: Path, options: tuple[str, ...]
) -> None:
    """The harness, both cards at their own settings: the int8 card marks nobody absent present
    and misses no more present or masked students than the float default. Twice: with
    onnxruntime's fused int8 kernels (a CPU node), and with the graph as written, Q/DQ around float
    convolutions (what a provider without fused int8 kernels, such as CUDA's, computes)."""
    result = run_harness(tmp_path, f"{DEFAULT_EMBEDDER},mobilefacenet-sirius-int8-v2", *options)
    assert [c["unfused"] for c in result["cards"]] == [bool(options)] * 2
    float_card, int8 = (c["rates_card"] for c in result["cards"])
    assert int8["absent"]["absent"] >= 50 and int8["absent"]["false_present"] == 0
    assert int8["present"]["wrong_face"] == 0 and int8["masked"]["wrong_face"] == 0
    for kind in ("present", "masked"):
        assert int8[kind]["present"] == float_card[kind]["present"] > 0
        assert int8[kind]["missed"] <= float_card[kind]["missed"], kind


def test_an_int8_card_calibrates_on_the_engine_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model build writes selectable cards before its dir is published, so an int8 card built
    there must take the staging dir's engine rather than ask for the built models."""
    engine_dir = build_models()

    def unpublished() -> Path:
        raise AssertionError("the build's own models are not published yet")

    monkeypatch.setattr(build, "build_models", unpublished)
    card_id = "mobilefacenet-sirius-int8-v2"
    card = build.write_embedder(card_id, tmp_path / "card", tmp_path, engine_dir=engine_dir)
    assert card.id == card_id and set(card.sha256) == {"model"}
    x = calibration_inputs(engine_dir)[:8]
    (want,) = _run(onnx.load(str(engine_dir / "embedder.onnx")), x)
    (got,) = _run(onnx.load(str(tmp_path / "card" / "embedder.onnx")), x)
    cosine = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert float(np.mean(1 - cosine)) < 0.05


def test_calibration_reads_only_the_photos_of_pinned_sdists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image's model stage has no scikit-image: calibrating on its astronaut there would fail,
    and calibrating on different photos elsewhere would ship different bytes under one id."""
    seen: list[str] = []
    fetch = assets.photo

    def recorded(name: str) -> Path:
        seen.append(name)
        return fetch(name)

    monkeypatch.setattr(assets, "photo", recorded)
    x = calibration_inputs(build_models())
    assert seen == sorted(assets.SOURCES) and "astronaut.png" not in seen
    # 13 faces (three Obamas, two half-cut, Biden, Tom Hanks, t1's six) and their mirror images
    assert x.shape == (26, 3, 112, 112)
