"""The operator <-> recognition-container contract: environment variables and exit codes.

The operator fills ``JobEnv`` and renders it with ``job_env`` into the Job's container; the container
reads the same fields through ``JobSettings``. One declaration, so the two sides cannot drift.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
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


class JobEnv(BaseModel):
    """What the recognition container is told to do; every field is one ROLLCALL_* variable.

    Declared once: the operator fills this model and renders it with ``job_env``; the container
    reads the same fields back through ``JobSettings``. A new setting is one field here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_namespace: str
    job_name: str
    job_uid: str = Field(min_length=1)
    mode: str = "identify"
    class_code: str
    gallery: str
    roster: list[str] = Field(default_factory=list)  # JSON list in the environment
    threshold: float | None = None
    margin: float | None = None  # None: the model card's
    top_k: int = 1
    model: str = "default"
    input_dir: Path = Path(INPUT_MOUNT)
    output_dir: Path | None = None
    annotate: bool = False
    redis_url: str = "redis://localhost:6379/0"
    redis_ca_file: Path | None = None  # CA of a rediss:// URL (redistls.client_options)
    result_ttl_seconds: int = 604800
    model_dir: Path | None = None
    # JSON list; empty = CUDA if present, else CPU
    providers: list[str] = Field(default_factory=list)
    batch_size: int = 32
    threads: int = 0  # onnxruntime threads per session; 0: sized from the pod's CPUs (cpu.max)
    min_face_px: int = 40
    max_image_bytes: int = 40 * 1024 * 1024
    max_image_pixels: int = 64_000_000  # decoded size cap, checked from the header before decoding
    progress_interval_seconds: float = 1.0
    # After recognition, how long a failed Redis write phase is run again in the process before the
    # job exits TRANSIENT (rollcall_job.writeretry); 0: exit at the first failure.
    redis_retry_seconds: float = Field(default=60.0, ge=0)
    termination_log: Path = Path(TERMINATION_LOG)
    # The RJ's metadata.creationTimestamp (the apiserver's clock): an erase stamped after it counts
    # as made while the job ran, even before its pod started (rollcall_job.recheck). None: an
    # operator from before this field; the job's first tombstone read is then the bound.
    submitted_at: AwareDatetime | None = None


class JobSettings(BaseSettings, JobEnv):
    """``JobEnv`` read from the container's environment (the job's side of the contract)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)


# The fields in declaration order, read once: pydantic's ``model_fields`` class property is slow
# enough to show in the operator's per-Job CPU when read per field.
_FIELDS = tuple(JobEnv.model_fields)
_FIELD_SET = frozenset(_FIELDS)


def env_name(field: str) -> str:
    """The variable that carries ``field``: ROLLCALL_ plus the field name in upper case."""
    if field.lower() not in _FIELD_SET:
        raise ValueError(f"unknown job setting {field!r}")
    return ENV_PREFIX + field.upper()


def _render(value: Any) -> str:
    # pydantic-settings parses complex fields (lists) from JSON; scalars from their text
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.isoformat()  # RFC 3339, offset included
    return str(value)


def job_env(settings: JobEnv, extra: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The container ``env`` list for ``settings``: every field that was set, then ``extra``.

    Only fields set explicitly are rendered (defaults stay the job's own); None is never rendered.
    ``extra`` (operator settings: field name -> text) comes last, sorted, and must name fields.
    """
    given = settings.model_fields_set
    env = [
        {"name": ENV_PREFIX + name.upper(), "value": _render(value)}
        for name in _FIELDS
        if name in given and (value := getattr(settings, name)) is not None
    ]
    env += [{"name": env_name(k), "value": v} for k, v in sorted((extra or {}).items())]
    return env


REDIS_URL_ENV = env_name("redis_url")
