"""The operator <-> recognition-container contract: environment variables and exit codes.

The operator renders ``job_env(...)`` into the Job's container; the container reads the same names
through ``JobSettings``. Both sides import this module, so the contract cannot drift.
"""

from __future__ import annotations

import json
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "ROLLCALL_"
# Where the operator mounts the RJ's photo volume (read-only) and the writable scratch/output dirs.
INPUT_MOUNT = "/data/input"
OUTPUT_MOUNT = "/data/output"
TERMINATION_LOG = "/dev/termination-log"
# Kubernetes caps a termination message at 4096 bytes; the summary must fit in it.
TERMINATION_MESSAGE_LIMIT = 4096


class ExitCode(IntEnum):
    """Exit codes the Job's podFailurePolicy keys on."""

    OK = 0
    # Bad input (no photos, unknown model, empty gallery, invalid settings): retrying cannot help.
    BAD_INPUT = 42
    # Redis unreachable, model load failed for a transient reason: a retry may succeed (EX_TEMPFAIL).
    TRANSIENT = 75


class JobSettings(BaseSettings):
    """What the recognition container is told to do; every field is one ROLLCALL_* variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    job_namespace: str
    job_name: str
    job_uid: str = Field(min_length=1)
    mode: str = "identify"
    class_code: str
    gallery: str
    roster: list[str] = Field(default_factory=list)  # JSON list in the environment
    threshold: float | None = None
    top_k: int = 1
    model: str = "default"
    input_dir: Path = Path(INPUT_MOUNT)
    output_dir: Path | None = None
    annotate: bool = False
    redis_url: str = "redis://localhost:6379/0"
    result_ttl_seconds: int = 604800
    model_dir: Path | None = None
    providers: list[str] = Field(
        default_factory=list
    )  # JSON list; empty = CUDA if present, else CPU
    batch_size: int = 32
    threads: int = 0
    min_face_px: int = 40
    max_image_bytes: int = 40 * 1024 * 1024
    max_image_pixels: int = 64_000_000  # decoded size cap, checked from the header before decoding
    progress_interval_seconds: float = 1.0
    termination_log: Path = Path(TERMINATION_LOG)


def _name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def job_env(
    *,
    namespace: str,
    name: str,
    uid: str,
    mode: str,
    class_code: str,
    gallery: str,
    roster: list[str],
    threshold: float | None,
    top_k: int,
    model: str,
    result_ttl_seconds: int,
    annotate: bool,
    extra: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The container ``env`` list for one RJ (plain values; secrets are added by the builder)."""
    values: dict[str, str] = {
        "job_namespace": namespace,
        "job_name": name,
        "job_uid": uid,
        "mode": mode,
        "class_code": class_code,
        "gallery": gallery,
        "roster": json.dumps(roster),
        "top_k": str(top_k),
        "model": model,
        "input_dir": INPUT_MOUNT,
        # Said explicitly (it is also the default) so a runtime that maps the pod's
        # terminationMessagePath elsewhere, like the local node agent, can rewrite it.
        "termination_log": TERMINATION_LOG,
        "result_ttl_seconds": str(result_ttl_seconds),
        "annotate": "true" if annotate else "false",
    }
    if threshold is not None:
        values["threshold"] = repr(threshold)
    if annotate:
        values["output_dir"] = OUTPUT_MOUNT
    env = [{"name": _name(k), "value": v} for k, v in values.items()]
    env += [{"name": _name(k), "value": v} for k, v in sorted((extra or {}).items())]
    return env


REDIS_URL_ENV = _name("redis_url")
