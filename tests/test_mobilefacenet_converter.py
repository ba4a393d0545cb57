"""MobileFaceNet's TFLite release converted to ONNX: the batch is freed without touching the
weights' own reshapes, and the ONNX model computes what the TFLite runtime computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rollcall_job.faces import read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.mobilefacenet import (
    PreluForm,
    fetch_tflite,
    fold_prelu,
    make_batch_dynamic,
    tflite_to_onnx,
)


def _fixed_batch_graph(batch: int, target: list[int]) -> onnx.ModelProto:
    """(batch, 2, 3) -> Reshape(target) plus a weight reshaped to (1, 6, 1) and added."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Reshape", ["w", "w_shape"], ["w3"]),
        helper.make_node("Reshape", ["w3", "w_back"], ["w2"]),
        helper.make_node("Add", ["flat", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(target, dtype=np.int64), "shape"),
        numpy_helper.from_array(np.arange(6, dtype=np.float32), "w"),
        numpy_helper.from_array(np.array([1, 6, 1], dtype=np.int64), "w_shape"),
        numpy_helper.from_array(np.array([1, 6], dtype=np.int64), "w_back"),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0], dtype=np.float32)


@pytest.mark.parametrize(
    ("batch", "target"),
    [(2, [2, 6]), (2, [2, -1]), (1, [1, -1]), (1, [1, 6])],
    ids=["batch2-explicit", "batch2-inferred", "batch1-inferred", "batch1-explicit"],
)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_fixed_batch_becomes_dynamic(batch: int, target: list[int], n: int) -> None:
    model = make_batch_dynamic(_fixed_batch_graph(batch, target))
    x = np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)
    got = _run(model, x)
    np.testing.assert_array_equal(got, x.reshape(n, 6) + np.arange(6, dtype=np.float32))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "n"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "n"
    # The weight's own reshapes keep their leading 1.
    shapes = {t.name: numpy_helper.to_array(t).tolist() for t in model.graph.initializer}
    assert shapes["w_shape"] == [1, 6, 1] and shapes["w_back"] == [1, 6]


def test_a_graph_without_a_batch_reshape_is_refused() -> None:
    model = _fixed_batch_graph(2, [2, 6])
    model.graph.node[0].op_type = "Identity"  # no Reshape carries the batch any more
    del model.graph.node[0].input[1:]
    with pytest.raises(ValueError, match="no Reshape"):
        make_batch_dynamic(model)


@pytest.fixture(scope="module")
def tflite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fetch_tflite(tmp_path_factory.mktemp("mfn") / "MobileFaceNet.tflite")


def _aligned_faces() -> npt.NDArray[np.float32]:
    """Two real 112x112 crops (insightface's aligned Tom Hanks, resized; and the astronaut's
    centre), as NHWC floats the way the card feeds them: RGB, (x - 127.5) / 128."""
    import cv2

    crops = []
    for name in ("Tom_Hanks_54745.png", "astronaut.png"):
        image = read_image(photo(name))
        h, w = image.shape[:2]
        side = min(h, w)
        square = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        crops.append(cv2.resize(square, (112, 112), interpolation=cv2.INTER_AREA)[..., ::-1])
    return ((np.stack(crops).astype(np.float32) - 127.5) / 128.0).astype(np.float32)


@pytest.mark.models
@pytest.mark.slow
def test_onnx_conversion_agrees_with_the_tflite_runtime(tflite_path: Path) -> None:
    pytest.importorskip("skimage")
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    x = _aligned_faces()
    tfl = interpreter_mod.Interpreter(model_path=str(tflite_path))
    tfl.allocate_tensors()
    tfl.set_tensor(tfl.get_input_details()[0]["index"], x)  # the TFLite graph wants batch 2
    tfl.invoke()
    reference = np.asarray(tfl.get_tensor(tfl.get_output_details()[0]["index"]))
    assert reference.shape == (2, 192)

    model = tflite_to_onnx(tflite_path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for rows in ([0], [1], [0, 1], [1, 0, 1]):  # any batch, not only two
        got = np.asarray(session.run(None, {"input": nchw[rows]})[0])
        assert got.shape == (len(rows), 192)
        np.testing.assert_allclose(got, reference[rows], atol=1e-4 * np.abs(reference).max())
    # Different faces give clearly different embeddings (the check above is not on noise).
    a, b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    assert float(a @ b) < 0.5


@pytest.mark.models
@pytest.mark.slow
def test_the_negated_prelu_leaves_onnxruntime_no_relu_to_run_alone(
    tflite_path: Path, tmp_path: Path
) -> None:
    """Why the float card is spelt ``negated``: once onnxruntime has optimised the graph, none of
    its Relus runs as a pass of its own (each is fused into the convolution before it), where the
    ``two-branch`` spelling keeps all 33; and both compute the same embeddings."""
    pytest.importorskip("skimage")  # the astronaut crop
    x = np.ascontiguousarray(_aligned_faces().transpose(0, 3, 1, 2))
    relus: dict[str, int] = {}
    outputs: dict[str, npt.NDArray[np.float32]] = {}
    for form in ("two-branch", "negated"):
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{form}.onnx")
        options.log_severity_level = 3  # the saved graph holds this CPU's layouts: a warning
        model = tflite_to_onnx(tflite_path, form).SerializeToString()
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outputs[form] = np.asarray(session.run(None, {"input": x})[0])
        optimised = onnx.load(str(tmp_path / f"{form}.onnx"))
        relus[form] = sum(n.op_type == "Relu" for n in optimised.graph.node)
    assert relus == {"two-branch": 33, "negated": 0}
    scale = float(np.abs(outputs["two-branch"]).max())
    np.testing.assert_allclose(outputs["negated"], outputs["two-branch"], atol=1e-5 * scale)


def _prelu_as_tflite2onnx_spells_it(half_slopes: npt.NDArray[np.float32]) -> onnx.ModelProto:
    """Relu(x) + Reshape(k) * (x - Abs(x)) over (n, C, 4, 4): the converter's PReLU spelling."""
    channels = half_slopes.size
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Abs", ["x"], ["a"]),
        helper.make_node("Sub", ["x", "a"], ["d"]),
        helper.make_node("Reshape", ["k", "k_shape"], ["k3"]),
        helper.make_node("Mul", ["k3", "d"], ["m"]),
        helper.make_node("Add", ["r", "m"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(half_slopes.astype(np.float32), "k"),
        numpy_helper.from_array(np.array([channels, 1, 1], dtype=np.int64), "k_shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("form", ["two-branch", "negated"])
@pytest.mark.parametrize(
    "slopes",
    [[0.25, 0.25], [-1.5, 0.0, 9.0], [1.0, -9.0, 0.5, 2.0]],
    ids=["leaky", "negative-zero-steep", "mixed"],
)
def test_prelu_folded_into_convolutions_computes_the_same(
    slopes: list[float], form: PreluForm
) -> None:
    slope = np.array(slopes, dtype=np.float32)
    model = _prelu_as_tflite2onnx_spells_it((slope / 2).astype(np.float32))
    folded = fold_prelu(model, form)
    assert {n.op_type for n in folded.graph.node} == {"Relu", "Conv", "Add"}
    assert sum(n.op_type == "Conv" for n in folded.graph.node) == 2
    x = np.random.default_rng(0).normal(size=(3, slope.size, 4, 4)).astype(np.float32) * 3
    expected = np.where(x > 0, x, slope[None, :, None, None] * x)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(folded, x), expected, rtol=1e-5, atol=1e-5)


def test_fold_prelu_refuses_a_graph_without_the_pattern() -> None:
    with pytest.raises(ValueError, match="no PReLU"):
        fold_prelu(_fixed_batch_graph(2, [2, 6]))
