"""An int8 copy of an embedder by onnxruntime's static quantisation (v2 ships beside the default).

The embedder is most of a frame's CPU time, and int8 convolutions run 1.5-2x faster on CPUs with
VNNI, but a quantised model is a new model (its own card id and galleries) and becomes a default
only if ``make eval`` says it decides as well as the float one. Activations are calibrated on the
default engine's aligned crops of the photos in pinned sdists (``assets.SOURCES``) and their
mirror images; weights are per channel (QDQ format, unsigned activations, signed weights). Build time
only: it needs ``onnx`` and onnxruntime's quantisation tools, which the job image never imports.

Where the loss came from (issue #10): MobileFaceNet's PReLU outputs have a few channels 10-26x
wider than the median one, and one int8 scale per tensor flattened the others (SQNR against float
fell from 26 to 10 dB at the first depthwise convolution). ``equalise_prelu`` moves those ranges
into the next convolution's weights first; ``INT8_RECIPES`` holds each int8 card's recipe, and
the v2 card's ``measured`` the recipes that did not help (calibration method, more calibration
photos, symmetric activations, reduce_range, float groups without equalisation).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

QUANT_OPSET = 13  # per-channel DequantizeLinear (its ``axis``) needs opset 13

# Parts of a MobileFaceNet-like graph that a recipe may keep in float (``node_groups``).
NodeGroup = Literal["first", "head", "prelu", "residual"]
CalibrationMethod = Literal["minmax", "percentile", "entropy"]


@dataclass(frozen=True)
class Recipe:
    """How to quantise: the calibration method, the node groups kept in float, and onnxruntime's
    range options (symmetric activations, 7-bit weights)."""

    method: CalibrationMethod = "minmax"
    keep_float: tuple[NodeGroup, ...] = ()
    symmetric: bool = False
    reduce_range: bool = False
    percentile: float = 99.999
    equalise: float | None = None  # ``equalise_prelu``'s alpha; None leaves the graph as is
    extra: Mapping[str, object] = field(default_factory=dict)


# The recipes of the int8 cards (``cards.py``), by card id. v1 quantised everything as is; v2
# evens the PReLU outputs' channels first and keeps the first convolution and the head (global
# depthwise conv, two linear 1x1s) in float. Measured on bench/eval_faces.py (models v9, mean
# cosine distance to the float embeddings of the harness's faces and masked faces): v1 0.167,
# equalised 0.029, equalised with first and head in float 0.028; the other recipes tried are in
# the v2 card's ``measured``.
INT8_RECIPES: dict[str, Recipe] = {
    "mobilefacenet-sirius-int8-v1": Recipe(),
    "mobilefacenet-sirius-int8-v2": Recipe(equalise=0.5, keep_float=("first", "head")),
}


def _attr(node: onnx.NodeProto, name: str, default: int = 1) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def node_groups(model: onnx.ModelProto) -> dict[NodeGroup, list[str]]:
    """Node names of each group, found by the graph's structure (nodes must be named).

    first: the convolution reading the graph input. head: the convolutions after the last Add
    (MobileFaceNet's global depthwise conv and its two linear 1x1 convs). prelu: an Add of two
    depthwise 1x1 convolutions and those convolutions (``mobilefacenet.fold_prelu``'s two-branch PReLU).
    residual: every other Add (the inverted residual blocks' skips).
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    dims = {t.name: list(t.dims) for t in graph.initializer}
    groups: dict[NodeGroup, list[str]] = {"first": [], "head": [], "prelu": [], "residual": []}

    def pointwise_depthwise(name: str) -> bool:
        node = producer.get(name)
        if node is None or node.op_type != "Conv" or _attr(node, "group") == 1:
            return False
        weight = dims.get(node.input[1])
        return weight is not None and weight[2:] == [1, 1]

    last_add = -1
    for i, node in enumerate(graph.node):
        if node.op_type == "Conv" and node.input[0] in inputs:
            groups["first"].append(node.name)
        if node.op_type != "Add":
            continue
        last_add = i
        if len(node.input) == 2 and all(pointwise_depthwise(x) for x in node.input):
            groups["prelu"] += [producer[x].name for x in node.input] + [node.name]
        else:
            groups["residual"].append(node.name)
    groups["head"] = [n.name for n in graph.node[last_add + 1 :] if n.op_type == "Conv"]
    return groups


def excluded_nodes(model: onnx.ModelProto, keep_float: Iterable[NodeGroup]) -> list[str]:
    """The names of the nodes in ``keep_float``'s groups, in graph order, each once."""
    groups = node_groups(model)
    wanted = {name for g in keep_float for name in groups[g]}
    return [n.name for n in model.graph.node if n.name in wanted]


def equalisation_scales(
    act: npt.NDArray[np.float32], weight: npt.NDArray[np.float32] | None, alpha: float
) -> npt.NDArray[np.float64]:
    """Per-channel divisors ``k`` of a tensor whose channel ``i`` spans ``act[i]`` (max |x|) and
    whose consumer's input channel ``i`` has weights up to ``weight[i]``.

    The tensor is divided by ``k`` and the consumer's weights multiplied, which leaves the float
    model's output unchanged. A depthwise consumer (``weight`` None) absorbs any ``k`` in its
    per-channel weight scale, so every channel is brought to the widest one's range; a full
    convolution shares one weight scale across its input channels, so ``k`` balances activation
    and weight ranges (``alpha`` 0.5: SmoothQuant's square-root split). Empty channels keep 1.
    """
    a = np.asarray(act, dtype=np.float64)
    if weight is None:
        k = a / a.max() if a.max() > 0 else np.ones_like(a)
    else:
        w = np.asarray(weight, dtype=np.float64)
        ok = (a > 0) & (w > 0)
        k = np.ones_like(a)
        k[ok] = a[ok] ** alpha / w[ok] ** (1 - alpha)
        k[ok] /= np.exp(np.mean(np.log(k[ok])))  # geometric mean 1: magnitudes stay put
    return np.where(k > 0, k, 1.0)


def _channel_ranges(
    model: onnx.ModelProto, names: list[str], calibration: npt.NDArray[np.float32]
) -> dict[str, npt.NDArray[np.float32]]:
    """max |x| per channel (axis 1) of the named tensors over the calibration rows."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = probe.graph.input[0].name
    out = {name: np.zeros(0, dtype=np.float32) for name in names}
    for start in range(0, len(calibration), 32):
        values = session.run(names, {feed: calibration[start : start + 32]})
        for name, v in zip(names, values, strict=True):
            r = np.abs(np.asarray(v)).max(axis=(0, *range(2, np.ndim(v))))
            out[name] = r if out[name].size == 0 else np.maximum(out[name], r)
    return out


def equalise_prelu(
    model: onnx.ModelProto, calibration: npt.NDArray[np.float32], alpha: float = 0.5
) -> onnx.ModelProto:
    """A copy of ``model`` whose PReLU outputs (``node_groups``' prelu Adds) have even channel
    ranges, the same function in float.

    MobileFaceNet's learned PReLU slopes leave a few channels 10-26x wider than the median one
    (measured on the registry crops), so one per-tensor int8 scale flattened the others. Each
    PReLU's two depthwise convolutions are divided by ``equalisation_scales`` and the
    convolutions reading it multiplied; a PReLU read by anything else is left alone.
    """
    out = name_nodes(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    producer = {o: n for n in graph.node for o in n.output}
    prelu = set(node_groups(out)["prelu"])
    adds = [n for n in graph.node if n.op_type == "Add" and n.name in prelu]
    readers = {a.output[0]: [n for n in graph.node if a.output[0] in n.input] for a in adds}

    def scalable(node: onnx.NodeProto) -> bool:
        return (
            node.op_type == "Conv"
            and all(x in inits and uses[x] == 1 for x in node.input[1:])
            and node.input[0] not in node.input[1:]
        )

    todo = [
        a
        for a in adds
        if readers[a.output[0]]
        and all(scalable(r) and r.input[0] == a.output[0] for r in readers[a.output[0]])
        and all(scalable(producer[x]) for x in a.input)
    ]
    ranges = _channel_ranges(out, [a.output[0] for a in todo], calibration)

    def scale(name: str, factor: npt.NDArray[np.float64], axis: int) -> None:
        w = numpy_helper.to_array(inits[name]).astype(np.float64)
        shape = [1] * w.ndim
        shape[axis] = -1
        inits[name].CopyFrom(
            numpy_helper.from_array((w * factor.reshape(shape)).astype(np.float32), name)
        )

    for add in todo:
        weights: list[npt.NDArray[np.float32] | None] = []
        for r in readers[add.output[0]]:
            kernel = numpy_helper.to_array(inits[r.input[1]])
            depthwise = _attr(r, "group") > 1
            weights.append(None if depthwise else np.abs(kernel).max(axis=(0, 2, 3)))
        dense = [w for w in weights if w is not None]
        widest = np.max(np.stack(dense), axis=0) if dense else None
        k = equalisation_scales(ranges[add.output[0]], widest, alpha)
        for x in add.input:  # the PReLU's two depthwise convolutions: weights and bias
            for name in producer[x].input[1:]:
                scale(name, 1 / k, 0)
        for r, w in zip(readers[add.output[0]], weights, strict=True):
            scale(r.input[1], k, 0 if w is None else 1)
    return out


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose unnamed nodes are named after their first output.

    ``fold_prelu`` leaves its convolutions unnamed; the quantiser keys per-node state by name.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node if n.name}
    for node in out.graph.node:
        if not node.name:
            name = f"{node.output[0]}/node"
            if name in taken:
                raise ValueError(f"node name {name!r} is taken")
            node.name = name
            taken.add(name)
    return out


def calibration_inputs(model_dir: Path) -> npt.NDArray[np.float32]:
    """The embedder's inputs for the default engine's aligned crops of the photos in pinned sdists,
    each with its mirror image, in photo order.

    Only those photos (not scikit-image's astronaut), so the image's model stage, which has no
    scikit-image, builds the same bytes as a developer's machine.
    """
    from rollcall_job.faces import load_engine, read_image
    from rollcall_job.models.assets import SOURCES, photo

    engine = load_engine(model_dir, threads=1)
    crops: list[npt.NDArray[np.uint8]] = []
    for name in sorted(SOURCES):
        image = read_image(photo(name))
        crops += engine.align(image, engine.detect(image))
    crops += [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    if not crops:
        raise ValueError("no faces to calibrate on")
    return engine.prepare(np.stack(crops))


def quantize_static_int8(
    model: onnx.ModelProto, calibration: npt.NDArray[np.float32], recipe: Recipe = Recipe()
) -> onnx.ModelProto:
    """``model`` with int8 convolutions, activation ranges from ``calibration`` (one run per row),
    quantised as ``recipe`` says."""
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.equalise is not None:
        model = equalise_prelu(model, calibration, recipe.equalise)
    converted = name_nodes(version_converter.convert_version(model, QUANT_OPSET))
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    extra: dict[str, object] = {"ActivationSymmetric": recipe.symmetric, **recipe.extra}
    if recipe.method == "percentile":
        extra["CalibPercentile"] = recipe.percentile
    input_name = converted.graph.input[0].name

    class Rows(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def __init__(self) -> None:
            self.rows = iter(range(len(calibration)))

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            i = next(self.rows, None)
            return None if i is None else {input_name: calibration[i : i + 1]}

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        src, pre, out = (Path(tmp) / f"{n}.onnx" for n in ("src", "pre", "int8"))
        onnx.save(converted, str(src))
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        # Groups are found on the pre-processed graph: its optimiser may fuse or rename nodes.
        excluded = excluded_nodes(onnx.load(str(pre)), recipe.keep_float)
        quantize_static(
            str(pre),
            str(out),
            Rows(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=recipe.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[recipe.method],
            extra_options=extra,
        )
        return onnx.load(str(out))
