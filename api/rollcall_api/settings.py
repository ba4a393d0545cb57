"""Settings of the API process, read from ``ROLLCALL_API_*`` environment variables.

The process reads them once through the cached :func:`get_settings`; ``create_app(settings)`` takes
an instance, so tests build apps with their own (or override ``deps.app_settings``) instead of
patching import-time globals.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rollcall_api.erasure import ALL_REPLICAS, REPLICA_TIMEOUT_MS

ENV_PREFIX = "ROLLCALL_API_"


class Settings(BaseSettings):
    """Everything the API needs to reach its clients and to protect itself."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    keys_file: Path = Field(
        default=Path("/etc/rollcall/api-keys/keys.yaml"),
        description="YAML/JSON file (a mounted Secret) mapping SHA-256 key hashes to schools.",
    )
    keys_reload_seconds: float = Field(
        default=10.0, ge=0, description="How often the key file is re-read (0 disables reloading)."
    )
    kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig to use; empty means the in-cluster ServiceAccount."
    )
    kube_context: str | None = None
    redis_url: str = "redis://localhost:6379/0"
    redis_ca_file: Path | None = Field(default=None, description="CA of a rediss:// redis_url.")
    max_body_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Larger request bodies are refused with 413."
    )
    idempotency_ttl_seconds: int = Field(
        default=86400, ge=60, description="How long an Idempotency-Key is remembered."
    )
    public_url: str = Field(
        default="", description="Prefix for status URLs in responses; empty gives relative URLs."
    )
    list_limit_default: int = Field(default=50, ge=1, le=500)
    events_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Progress poll interval of the SSE stream between watch events.",
    )
    events_keepalive_seconds: float = Field(default=15.0, gt=0)
    loop_lag_interval_seconds: float = Field(
        default=0.1, ge=0, description="Event-loop lag probe period (0 disables the probe)."
    )
    kube_timeout_seconds: float = Field(default=10.0, gt=0)
    submissions_per_minute: float = Field(
        default=60.0,
        ge=0,
        description="Job submissions a school may make per minute, per replica (0: unlimited).",
    )
    submissions_burst: int = Field(
        default=20, ge=1, description="Submissions a school may make at once before the rate bites."
    )
    streams_per_key: int = Field(
        default=10, ge=0, description="Open event streams per API key, per replica (0: unlimited)."
    )
    watch_linger_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a namespace's shared watch stays open after its last stream ends.",
    )
    docs_enabled: bool = Field(
        default=False, description="Serve /docs, /redoc and /openapi.json (off: they are 404)."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on this separate port (0: no metrics endpoint).",
    )
    erase_replicas: Literal["all"] | Annotated[int, Field(ge=0)] = Field(
        default=ALL_REPLICAS,
        description=(
            "Replicas that must confirm an erase (Redis WAIT) before it answers 200: 'all' (those "
            "the primary reports connected), a number, or 0 (do not wait)."
        ),
    )
    erase_replica_timeout_ms: int = Field(
        default=REPLICA_TIMEOUT_MS,
        ge=1,
        le=4000,
        description="How long an erase waits for them before answering 503 (under the 5 s socket "
        "timeout of the API's Redis client).",
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"
    log_json: bool = True


@lru_cache
def get_settings() -> Settings:
    return Settings()
