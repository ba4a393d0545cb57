"""The int8 embedder's build steps: unnamed nodes get names, and static quantisation turns a small
convolution network into QDQ int8 whose outputs stay near the float ones."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from rollcall_job.models.build import EMBEDDERS, SELECTABLE_EMBEDDERS
from rollcall_job.models.quantize import name_nodes, quantize_static_int8


def _net(names: tuple[str, str]) -> onnx.ModelProto:
    """input (n, 3, 16, 16) -> Conv 3x3 (8) -> Relu -> Conv 1x1 (4), opset 11 like tflite2onnx's."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name=names[0], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name=names[1]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])


@pytest.mark.parametrize(
    ("names", "want"),
    [
        (("conv1", "relu"), ["conv1", "relu", "y/node"]),
        (("", ""), ["a/node", "r/node", "y/node"]),
    ],
)
def test_unnamed_nodes_are_named_after_their_output(
    names: tuple[str, str], want: list[str]
) -> None:
    model = _net(names)
    assert [n.name for n in name_nodes(model).graph.node] == want
    assert model.graph.node[2].name == ""  # a copy: the input is left alone


def test_a_taken_name_is_refused() -> None:
    with pytest.raises(ValueError, match="taken"):
        name_nodes(_net(("y/node", "relu")))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_static_quantisation_gives_int8_convolutions_near_the_float_outputs() -> None:
    model = _net(("", ""))
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (8, 3, 16, 16)).astype(np.float32)
    int8 = quantize_static_int8(model, calibration)
    ops = [n.op_type for n in int8.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    weights = {t.name: t.data_type for t in int8.graph.initializer}
    assert TensorProto.INT8 in weights.values()
    x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    want, got = _run(model, x), _run(int8, x)
    assert got.shape == want.shape
    cosine = float(np.sum(got * want) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.999, cosine
    assert not np.array_equal(got, want)  # really quantised


def test_the_v1_int8_card_is_for_evaluation_only() -> None:
    card = EMBEDDERS["mobilefacenet-sirius-int8-v1"]()
    assert card.id not in SELECTABLE_EMBEDDERS
    assert card.id != EMBEDDERS["mobilefacenet-sirius-v1"]().id  # its own galleries
