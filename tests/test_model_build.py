"""The model build publishes a complete directory once, reuses it, and the test photos resolve."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from rollcall_job.models.assets import PHOTO_NAMES, photo
from rollcall_job.models.build import MANIFEST, build_models
from rollcall_job.models.cards import DETECTOR_CARD, EMBEDDER_CARD, load_card

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
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert build_models(out) == out
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # warm: nothing rebuilt
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers


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
