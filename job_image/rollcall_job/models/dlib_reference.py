"""A plain numpy forward pass of a parsed dlib network, in float64.

It exists to prove the ONNX converter: it shares only the parsed weights with it and computes
every layer the slow, obvious way (explicit windows, explicit zero-filled residual adds), so an
error in how the converter maps a dlib layer to ONNX operators shows up as a disagreement.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

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

F64 = npt.NDArray[np.float64]


def _windows(x: F64, size: int, stride: int) -> F64:
    """(n, c, h, w) -> (n, c, ho, wo, size, size) windows at the given stride."""
    view = sliding_window_view(x, (size, size), axis=(2, 3))
    return view[:, :, ::stride, ::stride]


def _conv(x: F64, layer: Conv) -> F64:
    p = layer.pad
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = _windows(padded, layer.weight.shape[2], layer.stride)
    out = np.einsum("nchwij,ocij->nohw", win, layer.weight.astype(np.float64), optimize=True)
    return np.asarray(out + layer.bias.astype(np.float64)[None, :, None, None], dtype=np.float64)


def _pool(x: F64, layer: Pool) -> F64:
    if layer.size == 0:  # the whole plane
        reduce = np.max if layer.kind == "max" else np.mean
        return np.asarray(reduce(x, axis=(2, 3), keepdims=True), dtype=np.float64)
    if layer.pad:
        raise NotImplementedError("padded pooling does not occur in this network")
    win = _windows(x, layer.size, layer.stride)
    if layer.kind == "max":
        return np.asarray(win.max(axis=(4, 5)), dtype=np.float64)
    return np.asarray(win.mean(axis=(4, 5)), dtype=np.float64)


def _add_zero_filled(a: F64, b: F64) -> F64:
    """dlib's tt::add: the result has the larger size on every axis; missing values are 0."""
    shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape, strict=True))
    out = np.zeros(shape, dtype=np.float64)
    out[tuple(slice(0, n) for n in a.shape)] += a
    out[tuple(slice(0, n) for n in b.shape)] += b
    return out


def to_input_tensor(net: DlibNet, rgb: npt.NDArray[np.uint8]) -> F64:
    """(n, size, size, 3) RGB bytes -> dlib's input tensor (n, 3, size, size)."""
    x = rgb.astype(np.float64).transpose(0, 3, 1, 2)
    mean = np.asarray(net.input.mean_rgb, dtype=np.float64)[None, :, None, None]
    return np.asarray((x - mean) / 256.0, dtype=np.float64)


def reference_forward(net: DlibNet, rgb: npt.NDArray[np.uint8]) -> F64:
    """Embeddings (n, dim) of aligned RGB crops (n, size, size, 3), computed layer by layer."""
    if rgb.ndim != 4 or rgb.shape[1:] != (net.input.size, net.input.size, 3):
        raise ValueError(f"expected (n, {net.input.size}, {net.input.size}, 3) RGB crops")
    x = to_input_tensor(net, rgb)
    tags: dict[int, F64] = {}
    for layer in net.layers:
        if isinstance(layer, Conv):
            x = _conv(x, layer)
        elif isinstance(layer, Affine):
            g = layer.gamma.astype(np.float64)[None, :, None, None]
            b = layer.beta.astype(np.float64)[None, :, None, None]
            x = x * g + b
        elif isinstance(layer, Relu):
            x = np.maximum(x, 0.0)
        elif isinstance(layer, Pool):
            x = _pool(x, layer)
        elif isinstance(layer, Tag):
            tags[layer.id] = x
        elif isinstance(layer, Skip):
            x = tags[layer.id]
        elif isinstance(layer, AddPrev):
            x = _add_zero_filled(x, tags[layer.id])
        elif isinstance(layer, Fc):
            flat = x.reshape(x.shape[0], -1)
            x = flat @ layer.weight.astype(np.float64)
            if layer.bias is not None:
                x = x + layer.bias.astype(np.float64)
        else:  # pragma: no cover - the union is exhaustive
            raise TypeError(type(layer))
    return x.reshape(x.shape[0], -1)
