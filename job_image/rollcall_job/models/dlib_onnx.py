"""Build an ONNX graph from a parsed dlib network.

The graph takes what the aligner produces, (n, size, size, 3) RGB float32 in 0..255, and does
dlib's own input transform inside ((x - mean) / 256), so a caller never has to know dlib's means.
Batch norm stays as separate Mul/Add nodes: onnxruntime fuses them into the convolutions.
dlib's residual add zero-fills the smaller operand (channels and, after some stride-2 blocks,
one row/column); ONNX Add only broadcasts, so the converter tracks static shapes and pads.
"""

from __future__ import annotations

from itertools import count
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from rollcall_job.models.dlib_format import (
    AddPrev,
    Affine,
    Conv,
    DlibNet,
    Fc,
    Pool,
    Relu,
    Skip,
    Tag,
)

OPSET = 17
INPUT_NAME = "rgb"
OUTPUT_NAME = "embedding"

Shape = tuple[int, int, int]  # channels, rows, cols


def _out_size(size: int, window: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - window) // stride


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._ids = count()

    def name(self, stem: str) -> str:
        return f"{stem}_{next(self._ids)}"

    def const(self, stem: str, value: npt.NDArray[Any]) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _pad_to(g: _Graph, value: str, shape: Shape, target: Shape) -> str:
    if shape == target:
        return value
    # ONNX pads: all starts (n, c, h, w), then all ends; dlib keeps data at the top-left.
    pads = [0, 0, 0, 0, 0] + [t - s for s, t in zip(shape, target, strict=True)]
    pads_name = g.const("pads", np.asarray(pads, dtype=np.int64))
    return g.op("Pad", [value, pads_name], mode="constant")


def dlib_to_onnx(net: DlibNet, *, producer: str = "rollcall") -> onnx.ModelProto:
    """Translate every layer; shapes are static except the batch dimension."""
    g = _Graph()
    size = net.input.size
    x = g.op("Transpose", [INPUT_NAME], perm=[0, 3, 1, 2])
    mean = np.asarray(net.input.mean_rgb, dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", [x, g.const("mean", mean)])
    x = g.op("Mul", [x, g.const("scale", np.asarray(1.0 / 256.0, dtype=np.float32))])
    shape: Shape = (3, size, size)
    tags: dict[int, tuple[str, Shape]] = {}

    for layer in net.layers:
        if isinstance(layer, Conv):
            k = layer.weight.shape[2]
            x = g.op(
                "Conv",
                [x, g.const("w", layer.weight), g.const("b", layer.bias)],
                kernel_shape=[k, k],
                strides=[layer.stride, layer.stride],
                pads=[layer.pad] * 4,
            )
            side = _out_size(shape[1], k, layer.stride, layer.pad)
            shape = (layer.weight.shape[0], side, side)
        elif isinstance(layer, Affine):
            x = g.op("Mul", [x, g.const("gamma", layer.gamma.reshape(1, -1, 1, 1))])
            x = g.op("Add", [x, g.const("beta", layer.beta.reshape(1, -1, 1, 1))])
        elif isinstance(layer, Relu):
            x = g.op("Relu", [x])
        elif isinstance(layer, Pool):
            if layer.size == 0:
                op = "GlobalMaxPool" if layer.kind == "max" else "GlobalAveragePool"
                x = g.op(op, [x])
                shape = (shape[0], 1, 1)
            else:
                x = g.op(
                    "MaxPool" if layer.kind == "max" else "AveragePool",
                    [x],
                    kernel_shape=[layer.size, layer.size],
                    strides=[layer.stride, layer.stride],
                    pads=[layer.pad] * 4,
                )
                side = _out_size(shape[1], layer.size, layer.stride, layer.pad)
                shape = (shape[0], side, side)
        elif isinstance(layer, Tag):
            tags[layer.id] = (x, shape)
        elif isinstance(layer, Skip):
            x, shape = tags[layer.id]
        elif isinstance(layer, AddPrev):
            other, other_shape = tags[layer.id]
            target: Shape = (
                max(shape[0], other_shape[0]),
                max(shape[1], other_shape[1]),
                max(shape[2], other_shape[2]),
            )
            x = g.op("Add", [_pad_to(g, x, shape, target), _pad_to(g, other, other_shape, target)])
            shape = target
        elif isinstance(layer, Fc):
            x = g.op("Flatten", [x], axis=1)
            x = g.op("MatMul", [x, g.const("fc", layer.weight)])
            if layer.bias is not None:
                x = g.op("Add", [x, g.const("fc_bias", layer.bias)])
        else:  # pragma: no cover - the union is exhaustive
            raise TypeError(type(layer))

    g.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME]))
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", size, size, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", net.embedding_dim])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.15
    onnx.checker.check_model(model)
    return model
