"""CycloneDX SBOMs of each image's Python environment, from uv.lock, without building an image.

Each image installs one extra's hash-pinned export of the lock (the Dockerfile's `lock` stage runs
the same `uv export`), so the SBOM of that export is the SBOM of the image's Python packages. The
export carries markers for every Python the lock covers (two numpys: one for 3.11, one for 3.12+),
so each export is first narrowed to the image's own interpreter; the lock's hashes stay, and the
SBOM lists them as distribution references. `make sbom` writes dist/sbom/rollcall-<image>.cdx.json.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Image:
    """One image's Python environment: the extra it installs and its interpreter's version."""

    extra: str
    python: str  # python_full_version, for markers such as `python_full_version < '3.11.3'`


# api/operator (and the CPU job twin) run on the Dockerfile's PYTHON_IMAGE (python:3.11.11); the
# shipped job image on CUDA_IMAGE, Ubuntu 24.04, whose python3 is 3.12.3 (tests/test_dockerfile.py).
IMAGES: dict[str, Image] = {
    "api": Image("api", "3.11.11"),
    "operator": Image("operator", "3.11.11"),
    "job": Image("job", "3.11.11"),
    "gpu": Image("gpu", "3.12.3"),
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
        found[re.sub(r"[-_.]+", "-", req.name).lower()] = spec.version
    return found


def export(uv: str, extra: str) -> str:
    """One extra's hash-pinned requirements, straight from uv.lock (which must be current)."""
    return subprocess.run(
        [uv, *export_args(extra), "--project", str(REPO), "--quiet"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def write_sbom(uv: str, name: str, out: Path) -> Path:
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
    return sbom


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "sbom")
    parser.add_argument("--uv", default=shutil.which("uv") or str(Path.home() / ".local/bin/uv"))
    parser.add_argument("images", nargs="*", help=f"some of {', '.join(IMAGES)} (default: all)")
    args = parser.parse_args(argv)
    if unknown := set(args.images) - set(IMAGES):
        parser.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    for name in args.images or IMAGES:
        sbom = write_sbom(args.uv, name, args.out)
        count = len(pins((args.out / f"rollcall-{name}.requirements.txt").read_text()))
        print(f"sbom image={name} packages={count} path={sbom}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
