"""An int8 copy of an embedder by onnxruntime's static quantisation: for evaluation only.

The embedder is most of a frame's CPU time, and int8 convolutions run 1.5-2x faster on CPUs with
VNNI, but a quantised model is a new model (its own card id and galleries) and becomes a default
only if ``make eval`` says it decides as well as the float one. Activations are calibrated on the
default engine's aligned crops of the registry photos (``assets.PHOTO_NAMES``) and their mirror
images; weights are per channel (QDQ format, unsigned activations, signed weights). Build time
only: it needs ``onnx`` and onnxruntime's quantisation tools, which the job image never imports.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx

QUANT_OPSET = 13  # per-channel DequantizeLinear (its ``axis``) needs opset 13


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
    """The embedder's inputs for the default engine's aligned crops of the registry photos, each
    with its mirror image, in photo order."""
    from rollcall_job.faces import load_engine, read_image
    from rollcall_job.models.assets import PHOTO_NAMES, photo

    engine = load_engine(model_dir, threads=1)
    crops: list[npt.NDArray[np.uint8]] = []
    for name in PHOTO_NAMES:
        image = read_image(photo(name))
        crops += engine.align(image, engine.detect(image))
    crops += [np.ascontiguousarray(c[:, ::-1]) for c in crops]
    if not crops:
        raise ValueError("no faces to calibrate on")
    return engine.prepare(np.stack(crops))


def quantize_static_int8(
    model: onnx.ModelProto, calibration: npt.NDArray[np.float32]
) -> onnx.ModelProto:
    """``model`` with int8 convolutions, activation ranges from ``calibration`` (one run per row)."""
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    converted = name_nodes(version_converter.convert_version(model, QUANT_OPSET))
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
        quantize_static(
            str(pre),
            str(out),
            Rows(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(str(out))
