"""CycloneDX SBOMs of each image's Python environment, from uv.lock, without building an image.

Each image installs one extra's hash-pinned export of the lock (the Dockerfile's `lock` stage runs
the same `uv export`), so the SBOM of that export is the SBOM of the image's Python packages. The
export carries markers for every Python the lock covers (two numpys: one for 3.11, one for 3.12+),
so each export is first narrowed to the image's own interpreter; the lock's hashes stay, and the
SBOM lists them as distribution references. The job images also list the face models they carry
(one CycloneDX ``machine-learning-model`` component per model card, its ONNX files with the sha256
the job checks on load, and the registry package each was converted from as its pedigree), read from
a model build that is byte-identical to the image's. `make sbom` writes
dist/sbom/rollcall-<image>.cdx.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from rollcall_job.models.cards import ModelCard, load_card

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Image:
    """One image's Python environment: the extra it installs and its interpreter's version."""

    extra: str
    python: str  # python_full_version, for markers such as `python_full_version < '3.11.3'`
    models: bool = False  # carries the face models (the Dockerfile's `models` stage)


# api/operator (and the CPU job twin) run on the Dockerfile's PYTHON_IMAGE (python:3.11.11); the
# shipped job image on CUDA_IMAGE, Ubuntu 24.04, whose python3 is 3.12.3 (tests/test_dockerfile.py).
IMAGES: dict[str, Image] = {
    "api": Image("api", "3.11.11"),
    "operator": Image("operator", "3.11.11"),
    "job": Image("job", "3.11.11", models=True),
    "gpu": Image("gpu", "3.12.3", models=True),
}


def export_args(extra: str) -> list[str]:
    """`uv` arguments that print one extra's runtime requirements with hashes (no dev, no project)."""
    return [
        "export",
        "--frozen",
        "--no-dev",
        "--extra",
        extra,
        "--no-emit-project",
        "--format",
        "requirements-txt",
    ]


def entries(requirements: str) -> list[str]:
    """The requirement entries of a requirements file, each with its continuation lines joined."""
    joined = re.sub(r"\\\n", " ", requirements)
    return [
        " ".join(line.split())
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    ]


def linux_x86_64(python: str) -> dict[str, str]:
    """The marker environment of a CPython `python` (full version) on Linux x86-64."""
    return {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python,
        "implementation_name": "cpython",
        "implementation_version": python,
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }


def for_python(requirements: str, python: str) -> str:
    """Only the entries an interpreter of that version on Linux x86-64 installs, hashes kept."""
    env = linux_x86_64(python)
    kept = []
    for entry in entries(requirements):
        spec = entry.split(" --hash=")[0]
        marker = Requirement(spec).marker
        if marker is None or marker.evaluate(env):
            kept.append(entry)
    return "".join(f"{entry}\n" for entry in kept)


def pins(requirements: str) -> dict[str, str]:
    """Normalised name -> pinned version of each `name==version` entry."""
    found: dict[str, str] = {}
    for entry in entries(requirements):
        req = Requirement(entry.split(" --hash=")[0])
        (spec,) = req.specifier
        found[pypi_name(req.name)] = spec.version
    return found


def export(uv: str, extra: str) -> str:
    """One extra's hash-pinned requirements, straight from uv.lock (which must be current)."""
    return subprocess.run(
        [uv, *export_args(extra), "--project", str(REPO), "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def pypi_name(name: str) -> str:
    """A PyPI name as purl spells it (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_SOURCE = re.compile(r"^(?P<name>[\w.-]+) (?P<version>[\w.!+-]+) \((?P<registry>PyPI|npm)\)")


def model_components(models: Path) -> list[dict[str, Any]]:
    """One ``machine-learning-model`` component per model card under ``models`` (a model build).

    Each lists its files (relative to ``models``) with the sha256 its card records, its licence
    and source as published, and the registry package it was converted from (purl and the sha256
    the build checked, from manifest.json) as its pedigree.
    """
    manifest = json.loads((models / "manifest.json").read_text())
    source_hashes: dict[str, str] = manifest["sources"]["sha256"]
    root = models.resolve()
    cards: dict[str, tuple[ModelCard, Path]] = {}  # id -> the card and its folder, first seen
    for path in sorted(models.rglob("*.card.json")):
        card = load_card(path)
        cards.setdefault(card.id, (card, path.parent))
    components = []
    for model_id, (card, card_dir) in sorted(cards.items()):
        component: dict[str, Any] = {
            "type": "machine-learning-model",
            "bom-ref": f"model:{model_id}",
            "name": model_id,
            "version": f"models-v{manifest['version']}",
            "description": f"{card.kind}: {card.source}",
            "licenses": [{"license": {"name": card.licence or "unknown"}}],
            "components": [
                {
                    "type": "file",
                    "bom-ref": f"model:{model_id}:{role}",
                    "name": card.path(role, card_dir).relative_to(root).as_posix(),
                    "hashes": [{"alg": "SHA-256", "content": digest}],
                }
                for role, digest in sorted(card.sha256.items())
            ],
        }
        if match := _SOURCE.match(card.source):
            name, version = match["name"], match["version"]
            kind = "pypi" if match["registry"] == "PyPI" else "npm"
            ancestor: dict[str, Any] = {
                "type": "library",
                "bom-ref": f"source:{model_id}",
                "name": name,
                "version": version,
                "purl": f"pkg:{kind}/{pypi_name(name) if kind == 'pypi' else name}@{version}",
            }
            if digest := source_hashes.get(f"{name}=={version}"):
                ancestor["hashes"] = [{"alg": "SHA-256", "content": digest}]
            component["pedigree"] = {"ancestors": [ancestor]}
        components.append(component)
    return components


def add_models(sbom: Path, models: Path) -> int:
    """Append the model components to a written SBOM; how many were added."""
    bom = json.loads(sbom.read_text())
    components = model_components(models)
    bom["components"] = [*bom.get("components", []), *components]
    sbom.write_text(json.dumps(bom, indent=2, sort_keys=False) + "\n")
    return len(components)


def write_sbom(uv: str, name: str, out: Path, models: Path | None = None) -> Path:
    """Narrowed export and its CycloneDX JSON SBOM for one image; returns the SBOM's path."""
    image = IMAGES[name]
    out.mkdir(parents=True, exist_ok=True)
    requirements = out / f"rollcall-{name}.requirements.txt"
    requirements.write_text(for_python(export(uv, image.extra), image.python))
    sbom = out / f"rollcall-{name}.cdx.json"
    cyclonedx = (
        shutil.which("cyclonedx-py", path=str(Path(sys.executable).parent)) or "cyclonedx-py"
    )
    subprocess.run(
        [
            cyclonedx,
            "requirements",
            str(requirements),
            "--pyproject",
            str(REPO / "pyproject.toml"),
            "--output-reproducible",
            "--output-format",
            "JSON",
            "--output-file",
            str(sbom),
        ],
        check=True,
        # The root component (rollcall) lists no dependency graph: a requirements file has none.
        env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
    )
    if image.models:
        if models is None or not (models / "manifest.json").is_file():
            raise SystemExit(f"sbom: image {name} carries the face models: build them first "
                             f"(make models), or pass --models (looked in {models})")  # fmt: skip
        add_models(sbom, models)
    return sbom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "sbom")
    parser.add_argument("--uv", default=shutil.which("uv") or str(Path.home() / ".local/bin/uv"))
    parser.add_argument("--models", type=Path, default=None,
                        help="a model build (default: make models' output)")  # fmt: skip
    parser.add_argument("images", nargs="*", help=f"some of {', '.join(IMAGES)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := set(args.images) - set(IMAGES):
        parser.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    models = args.models
    if models is None:
        from rollcall_job.models.cache import models_dir

        models = models_dir()
    for name in args.images or IMAGES:
        sbom = write_sbom(args.uv, name, args.out, models)
        count = len(pins((args.out / f"rollcall-{name}.requirements.txt").read_text()))
        listed = sum(
            c["type"] == "machine-learning-model"
            for c in json.loads(sbom.read_text())["components"]
        )
        print(f"sbom image={name} packages={count} models={listed} path={sbom}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
