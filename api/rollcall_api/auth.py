"""Per-school API keys: stored hashed, compared in constant time, each mapped to namespaces.

Why SHA-256 and not bcrypt/argon2: the keys are 256-bit random tokens (see :func:`new_key`), so a
leaked hash cannot be reversed by guessing; slow password hashes defend low-entropy *passwords* and
would spend ~100 ms of CPU on the event loop per request. A plain digest keeps the file safe to
store in a Secret and the check cheap.

The key file (YAML or JSON, usually a mounted Kubernetes Secret) maps the hex SHA-256 of each key
to the school holding it::

    3b5d...e1:            # sha256(key).hexdigest()
      school: north-high
      namespaces: [school-north-high]   # the first is the default
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollcall_contract.model import DNS_LABEL

log = logging.getLogger("rollcall_api.auth")

KEY_PREFIX = "rk_"
_HEX64 = r"^[0-9a-f]{64}$"


def new_key() -> str:
    """A fresh API key: 32 random bytes, URL-safe, with a recognisable prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    school: str = Field(min_length=1, max_length=128)
    namespaces: list[str] = Field(min_length=1, max_length=64)

    def model_post_init(self, _: Any) -> None:
        for ns in self.namespaces:
            if len(ns) > 63 or not re.fullmatch(DNS_LABEL, ns):
                raise ValueError(f"namespace {ns!r} is not a DNS label")


@dataclass(frozen=True)
class Caller:
    """The authenticated school; ``key_id`` (a hash prefix) is safe to log, the key never is."""

    school: str
    namespaces: tuple[str, ...]
    key_id: str
    digest: bytes = field(default=b"", repr=False)

    @property
    def default_namespace(self) -> str:
        return self.namespaces[0]


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping naming one key twice.

    PyYAML (and JSON) keep the last of repeated keys without a word: a key file listing one
    digest for two schools (or one entry's ``namespaces`` twice) would hand the key to whichever
    came last. Such a file is ambiguous, so it is refused like a malformed one.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: SafeLoader refuses it below
                continue
            if repeated:
                raise ValueError(f"key file: {str(key)[:8]!r} is listed more than once")
        return super().construct_mapping(node, deep=deep)


def parse_key_file(text: str) -> dict[bytes, Caller]:
    """Parse the key file into digest -> caller; raises ValueError on any malformed entry, and on
    a digest listed twice (in any spelling: case, ``sha256:``): the file would be ambiguous."""
    raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # a SafeLoader: no arbitrary objects
    if not isinstance(raw, dict):
        raise ValueError("key file must be a mapping of sha256 hex -> {school, namespaces}")

    out: dict[bytes, Caller] = {}
    for digest, entry in raw.items():
        digest = str(digest).lower().removeprefix("sha256:")
        if not re.fullmatch(_HEX64, digest):
            raise ValueError("key file: every key must be a 64-hex-digit SHA-256 digest")
        if bytes.fromhex(digest) in out:
            raise ValueError(f"key file: key {digest[:8]} is listed more than once")
        try:
            parsed = KeyEntry.model_validate(entry)
        except ValidationError as exc:
            raise ValueError(f"key file entry {digest[:8]}: {exc.errors()[0]['msg']}") from None
        raw_digest = bytes.fromhex(digest)
        out[raw_digest] = Caller(
            school=parsed.school,
            namespaces=tuple(parsed.namespaces),
            key_id=digest[:8],
            digest=raw_digest,
        )
    return out


class KeyStore:
    """The loaded keys; reloaded in a worker thread when the file changes (Secret rotation).

    Fail closed: a file that is missing, unreadable or malformed empties the store (every key is
    refused, ``loaded`` is False so ``/readyz`` fails) until a valid file is read. Keeping the
    previous keys instead would keep a key valid that the new file meant to revoke.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[bytes, Caller] = {}
        self._stamp: tuple[int, int] | None = None
        self._error: str | None = None
        self.loaded = False

    def __len__(self) -> int:
        return len(self._keys)

    def _load_sync(self) -> bool:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp and self.loaded:
            return False
        self._stamp = stamp
        keys = parse_key_file(self.path.read_text(encoding="utf-8"))
        self._keys, self.loaded = keys, True
        return True

    def _refuse_all(self) -> None:
        self._keys, self.loaded = {}, False

    async def reload(self) -> None:
        """Re-read the file if it changed; a bad or missing file refuses every key until fixed."""
        try:
            if await anyio.to_thread.run_sync(self._load_sync):
                self._error = None
                log.info("api keys loaded", extra={"keys": len(self._keys), "path": str(self.path)})
        except (OSError, ValueError, yaml.YAMLError) as exc:
            self._refuse_all()
            if str(exc) != self._error:  # once per distinct failure, not on every reload tick
                self._error = str(exc)
                log.error(
                    "api key file rejected: refusing every key until a valid file is loaded",
                    extra={"path": str(self.path), "error": str(exc)},
                )

    def authenticate(self, token: str) -> Caller | None:
        """The caller whose stored digest equals the token's, found by hash lookup.

        One dict lookup, not a scan of every school's digest: a scan cost time linear in the
        number of schools on the event loop for every request. The lookup's timing cannot leak
        the key: it depends on SHA-256 digests, which a caller cannot steer towards a stored one
        without the key itself; the match is still confirmed with a constant-time compare.
        """
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        caller = self._keys.get(digest)
        if caller is None or not hmac.compare_digest(caller.digest, digest):
            return None
        return caller
