"""Model cards: built-ins are complete, incomplete cards are refused, and a school's own
embedder (here a tiny generated ONNX model with a cosine card) runs without code changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from rollcall_job.faces import load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import (
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    SELECTABLE_EMBEDDERS,
    build_models,
)
from rollcall_job.models.cards import (
    ARCFACE_TEMPLATE_112,
    DETECTOR_CARD,
    EMBEDDER_CARD,
    ModelCard,
    dlib_chip_template,
    dlib_resnet_card,
    load_card,
    mobilefacenet_card,
    mtcnn_card,
    write_card,
)


@pytest.mark.parametrize(
    "card",
    [*(make() for make in EMBEDDERS.values()), mtcnn_card()],
    ids=[*EMBEDDERS, "mtcnn"],
)
def test_builtin_cards_round_trip_through_json(card: ModelCard, tmp_path: Path) -> None:
    path = tmp_path / "x.card.json"
    hashed = card.model_copy(update={"sha256": dict.fromkeys(card.files, "0" * 64)})
    for each in (card, hashed):
        write_card(each, path)
        assert load_card(path) == each


@pytest.mark.parametrize(
    ("make", "want"),
    [
        (dlib_resnet_card, ("dlib-resnet-v1", "euclidean", 0.5, 128, (150, 150), "NHWC")),
        (mobilefacenet_card, ("mobilefacenet-sirius-v1", "cosine", 0.4, 192, (112, 112), "NCHW")),
    ],
)
def test_embedder_cards_say_how_to_compare(
    make: Callable[[], ModelCard], want: tuple[object, ...]
) -> None:
    """Ids are gallery keys: a changed id orphans every enrolled gallery, so they are pinned."""
    card = make()
    got = (card.id, card.metric, card.threshold, card.embedding_dim, card.input_size, card.layout)
    assert got == want


def test_mobilefacenet_card_feeds_the_insightface_crop() -> None:
    card = mobilefacenet_card()
    assert card.template == ARCFACE_TEMPLATE_112
    assert (card.colour, card.mean, card.std) == ("RGB", (127.5,) * 3, (128.0,) * 3)


def test_default_embedder_is_the_measured_winner_and_ids_are_distinct() -> None:
    assert DEFAULT_EMBEDDER == "mobilefacenet-sirius-v1"
    assert DEFAULT_EMBEDDER not in SELECTABLE_EMBEDDERS
    assert set(SELECTABLE_EMBEDDERS) == {"dlib-resnet-v1", "mobilefacenet-sirius-int8-v2"}
    ids = [make().id for make in EMBEDDERS.values()]
    assert ids == list(EMBEDDERS) and len(set(ids)) == len(ids)
    # Weights of undocumented origin are evaluated, never shipped.
    for card_id in (DEFAULT_EMBEDDER, *SELECTABLE_EMBEDDERS):
        assert EMBEDDERS[card_id]().training_data != "undocumented"


@pytest.mark.parametrize("card_id", list(EMBEDDERS))
def test_embedder_cards_record_where_they_come_from(card_id: str) -> None:
    card = EMBEDDERS[card_id]()
    assert card.source and card.licence and card.training_data
    assert any(ch.isdigit() for ch in card.source)  # a pinned version, not just a name


def test_dlib_template_is_a_symmetric_face_inside_the_chip() -> None:
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = dlib_chip_template(150, 0.25)
    assert 0 < lx < nx < rx < 150 and 0 < mlx < nx < mrx < 150
    assert ly == pytest.approx(ry, abs=0.5) and mly == pytest.approx(mry, abs=0.5)
    assert ly < ny < mly
    assert (lx + rx) / 2 == pytest.approx(75, abs=2)  # centred
    # No padding and unit size gives dlib's unit-square mean face back.
    assert dlib_chip_template(1, 0.0)[2] == pytest.approx((0.490127, 0.515625))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"template": None}, "template"),
        ({"metric": None}, "metric"),
        ({"files": {"weights": "x.onnx"}}, "files.model"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"layout": "CHWN"}, "layout"),
        ({"colour": "GRAY"}, "colour"),
        ({"surprise": 1}, "surprise"),
        ({"sha256": {"weights": "0" * 64}}, "sha256 names a role"),
        ({"sha256": {"model": "ABC"}}, "64 lowercase hex"),
        ({"sha256": {"model": "F" * 64}}, "64 lowercase hex"),
    ],
)
def test_incomplete_or_wrong_embedder_cards_are_refused(
    change: dict[str, object], message: str
) -> None:
    data = dlib_resnet_card().model_dump()
    data.update(change)
    with pytest.raises(ValidationError, match=message):
        ModelCard.model_validate(data)


def test_detector_cards_need_a_known_family_and_its_files() -> None:
    data = mtcnn_card().model_dump()
    with pytest.raises(ValidationError, match="unknown detector family"):
        ModelCard.model_validate({**data, "family": "yolo"})
    with pytest.raises(ValidationError, match="onet"):
        ModelCard.model_validate({**data, "files": {"pnet": "p.onnx", "rnet": "r.onnx"}})


def test_yaml_cards_load(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "embedder.card.yaml"
    path.write_text(
        "id: arcface-r50\nkind: embedder\nfamily: arcface\nfiles: {model: w600k_r50.onnx}\n"
        "input_size: [112, 112]\nlayout: NCHW\ncolour: RGB\nmean: [127.5, 127.5, 127.5]\n"
        "std: [127.5, 127.5, 127.5]\nmetric: cosine\nthreshold: 0.5\nembedding_dim: 512\n"
        "template: [[38.29, 51.70], [73.53, 51.50], [56.03, 71.74],\n"
        "           [41.55, 92.37], [70.73, 92.20]]\n"
    )
    card = load_card(path)
    assert card.metric == "cosine" and card.input_size == (112, 112)


def _tiny_embedder(weights: npt.NDArray[np.float32]) -> onnx.ModelProto:
    """NCHW float input (n, 3, 112, 112) -> per-channel means @ weights: (n, 4)."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.models
def test_a_schools_own_embedder_runs_from_its_card(tmp_path: Path) -> None:
    built = build_models()
    weights = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.0
    onnx.save(_tiny_embedder(weights), tmp_path / "tiny.onnx")
    card = ModelCard(
        id="tiny-cosine",
        kind="embedder",
        family="test",
        files={"model": "tiny.onnx"},
        input_size=(112, 112),
        layout="NCHW",
        colour="RGB",
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
        template=((38.29, 51.70), (73.53, 51.50), (56.03, 71.74), (41.55, 92.37), (70.73, 92.20)),
        metric="cosine",
        threshold=0.5,
        embedding_dim=4,
    )
    (tmp_path / EMBEDDER_CARD).write_text(card.model_dump_json())
    # Reuse the built detector: card files may point elsewhere (absolute paths here).
    detector = json.loads((built / DETECTOR_CARD).read_text())
    detector["files"] = {k: str(built / v) for k, v in detector["files"].items()}
    (tmp_path / DETECTOR_CARD).write_text(json.dumps(detector))

    engine = load_engine(tmp_path, threads=1)
    image = read_image(photo("astronaut.png"))
    faces = engine.detect(image)
    assert len(faces) == 1
    crops = engine.align(image, faces)
    assert crops[0].shape == (112, 112, 3)
    got = engine.embed(image, faces)
    # What the card promises: RGB order, (x - 127.5) / 127.5, then the model.
    rgb = crops[0][..., ::-1].astype(np.float64)
    expected = ((rgb - 127.5) / 127.5).mean(axis=(0, 1)) @ weights
    assert got.shape == (1, 4)
    np.testing.assert_allclose(got[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.models
def test_every_builtin_embedder_is_selectable_by_its_id() -> None:
    """``spec.model: <card id>`` picks a sub-folder; the default's points at the top-level model,
    so a job that names today's default keeps it (and its gallery) when the default moves on."""
    built = build_models()
    image = read_image(photo("astronaut.png"))
    top = load_engine(built, threads=1)
    faces = top.detect(image)
    assert len(faces) == 1
    for card_id in (DEFAULT_EMBEDDER, *SELECTABLE_EMBEDDERS):
        engine = load_engine(built / card_id, threads=1)
        assert engine.embedder_card.id == card_id
        assert engine.detector_card == top.detector_card.model_copy(
            update={"files": engine.detector_card.files}
        )
        vector = engine.embed(image, faces)
        assert vector.shape == (1, engine.embedding_dim)
        if card_id == DEFAULT_EMBEDDER:
            np.testing.assert_array_equal(vector, top.embed(image, faces))
