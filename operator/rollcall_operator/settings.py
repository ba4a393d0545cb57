"""Operator settings: every field is one ``ROLLCALL_OPERATOR_*`` environment variable.

Cluster-specific knobs (GPU resource name, node placement, image, Redis Secret, caps) live here, not
in the RJ spec, so a teacher's manifest cannot pick nodes or images and the same RJ runs anywhere.
Complex values (lists, dicts) are JSON in the environment.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rollcall_contract.jobenv import env_name
from rollcall_contract.model import DnsLabel
from rollcall_operator.egress import Allowlist
from rollcall_operator.quantities import JobBounds, parse_quantity

ENV_PREFIX = "ROLLCALL_OPERATOR_"
# Job settings the builder takes from each RJ (its namespace decides which school's keys it may
# touch) or from its namespace's Secret: one value for every job would break tenant separation.
_PER_RJ_SETTINGS = frozenset({"job_namespace", "job_name", "job_uid", "redis_url"})
# The digest form the chart accepts (values.schema.json): what registries report for an image.
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


def check_image_reference(value: str) -> str:
    """Refuse a job image reference no kubelet can pull: ``repo@latest``, ``@sha256:...``, blanks.

    The apiserver stores any non-blank image string, so a malformed one would otherwise surface as
    InvalidImageName on every job pod, far from the setting that caused it.
    """
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"image {value!r}: empty or contains whitespace")
    name, at, digest = value.partition("@")
    if at and (not name or not _DIGEST.fullmatch(digest)):
        raise ValueError(f"image {value!r}: expected repository@sha256:<64 lowercase hex digits>")
    return value


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- the Job's pod ---------------------------------------------------------------------
    image: str = Field(
        default="ghcr.io/rollcall/rollcall-job:0.1.0",
        description="repository:tag, or repository@sha256:<hex> to pin one image (digest wins).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    command: list[str] | None = Field(default=None, description="Override the image's entrypoint.")
    args: list[str] | None = None
    container_name: str = "recognize"
    gpu_resource: str = Field(default="nvidia.com/gpu", description="Extended resource for a GPU.")
    gpu_tolerations: list[dict[str, Any]] = Field(
        default_factory=lambda: [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ],
        description="Added to GPU Jobs only: GPU nodes are usually tainted.",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_node_selector: dict[str, str] = Field(
        default_factory=dict, description="Added to GPU Jobs only (e.g. a GPU product label)."
    )
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    node_lost_toleration_seconds: int | None = Field(
        default=60,
        ge=0,
        description="A job pod on a not-ready/unreachable node is evicted (and retried elsewhere) "
        "this long after the node is marked so; empty: the cluster's default, 300 s.",
    )
    lost_pod_timeout_seconds: int | None = Field(
        default=60,
        ge=0,
        description="A job pod evicted from an unreachable node and still Terminating this long "
        "after its grace period is marked Failed and removed, so its Job retries; empty: never.",
    )

    @field_validator("node_lost_toleration_seconds", "lost_pod_timeout_seconds", mode="before")
    @classmethod
    def _null_is_off(cls, value: object) -> object:
        # the chart renders a null value as the JSON text "null"
        return None if value in ("null", "") else value

    runtime_class_name: str | None = Field(default=None, description="e.g. nvidia")
    priority_class_name: str | None = None
    service_account_name: str | None = Field(
        default=None, description="Pod ServiceAccount (its token is never mounted)."
    )
    run_as_user: int = Field(default=65532, ge=1)
    run_as_group: int = Field(default=65532, ge=1)
    fs_group: int | None = Field(default=65532, ge=1)
    tmp_size_limit: str = "2Gi"
    output_size_limit: str = "4Gi"
    redis_secret_name: str = Field(
        default="rollcall-redis",
        description="Secret, in the RJ's namespace, holding the Redis URL.",
    )
    redis_secret_key: str = "url"
    job_redis_ca_configmap: str = Field(
        default="",
        description="ConfigMap (key ca.crt), in the RJ's namespace, with the CA of a rediss:// URL.",
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra ROLLCALL_* settings for the container, e.g. PROVIDERS.",
    )
    default_model: DnsLabel | None = Field(
        default=None,
        description="Model card of RJs whose spec.model is 'default' (e.g. the int8 card on a "
        "CPU-only cluster); empty: the job image's built-in default. RJs naming a card keep it.",
    )

    @field_validator("default_model", mode="before")
    @classmethod
    def _empty_is_builtin(cls, value: object) -> object:
        # an empty ROLLCALL_OPERATOR_DEFAULT_MODEL (set by hand) means "not set", as the chart's ""
        return None if value == "" else value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        return check_image_reference(value)

    @field_validator("extra_env")
    @classmethod
    def _known_job_settings(cls, value: dict[str, str]) -> dict[str, str]:
        # a typo would otherwise reach every job pod and be ignored there: refuse it at start-up
        for name in value:
            env_name(name)
            if name.lower() in _PER_RJ_SETTINGS:  # the RJ's own: its tenant, its Redis user
                raise ValueError(f"extra_env cannot set {name!r}: it comes from each RJ")
            if name.lower() == "model":  # would override the card an RJ names, too
                raise ValueError(
                    "extra_env cannot set 'model': set default_model (chart: models.default), "
                    "which leaves an RJ that names a card alone"
                )
        return value

    pod_annotations: dict[str, str] = Field(default_factory=dict)
    annotation_passthrough_prefixes: list[str] = Field(
        default_factory=list,
        description="RJ annotations whose key starts with one of these are copied onto the pod.",
    )

    # --- what the operator watches and how ---------------------------------------------------
    namespaces: list[str] = Field(default_factory=list, description="Empty: the whole cluster.")
    kubeconfig: Path | None = Field(default=None, description="Empty: in-cluster or $KUBECONFIG.")
    redis_url: str = Field(default="redis://localhost:6379/0", description="For progress reads.")
    redis_ca_file: Path | None = Field(default=None, description="CA of a rediss:// redis_url.")
    peering_name: str | None = Field(
        default=None, description="kopf peering object for leader election; empty: standalone."
    )
    priority: int | None = Field(
        default=None,
        description="kopf peering priority; empty: a random one per process, so replicas differ.",
    )
    peering_lifetime_seconds: int = Field(
        default=20, ge=5, description="How long a silent peer counts as alive (takeover delay)."
    )
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="0 disables /metrics.")

    # --- queueing ------------------------------------------------------------------------------
    max_running: int = Field(default=0, ge=0, description="Cap on unfinished Jobs; 0: no cap.")
    max_running_per_namespace: int = Field(default=0, ge=0, description="Per namespace; 0: no cap.")
    max_gpus: int = Field(default=0, ge=0, description="GPUs of unfinished Jobs; 0: no cap.")
    max_gpus_per_namespace: int = Field(default=0, ge=0, description="Per namespace; 0: no cap.")
    max_gpus_per_job: int = Field(default=0, ge=0, description="Bigger RJs fail; 0: schema's 8.")
    max_cpu_per_job: str = Field(default="", description="Quantity, e.g. 8; empty: unbounded.")
    max_memory_per_job: str = Field(
        default="", description="Quantity, e.g. 32Gi; empty: unbounded."
    )
    trust_kueue: bool = Field(
        default=False,
        description="RJs naming a Kueue queue skip rollcall's caps (Kueue's quotas admit them).",
    )
    admission_concurrency: int = Field(default=32, ge=1, description="Job creations in flight.")
    quota_retry_seconds: float = Field(
        default=5.0, gt=0, description="First wait after a ResourceQuota refused a Job; doubles."
    )
    quota_retry_max_seconds: float = Field(default=300.0, gt=0)

    @field_validator("max_cpu_per_job", "max_memory_per_job")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if value:
            parse_quantity(value)
        return value

    # --- progress and webhooks -----------------------------------------------------------------
    progress_interval_seconds: float = Field(default=2.0, gt=0)
    webhook_max_attempts: int = Field(default=8, ge=1)
    webhook_backoff_seconds: float = Field(default=1.0, gt=0)
    webhook_backoff_max_seconds: float = Field(default=300.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_secret_name: str = Field(
        default="rollcall-webhook",
        description="The signing Secret, one per school namespace; RJs cannot name another.",
    )
    webhook_secret_key: str = "secret"
    webhook_allow_cidrs: list[str] = Field(
        default_factory=list,
        description="Networks a callback may reach although private/loopback/link-local/cluster.",
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (exact or *.suffix) a callback may reach whatever they resolve to.",
    )
    webhook_deny_cidrs: list[str] = Field(
        default_factory=list, description="Extra ranges to refuse: public pod/service CIDRs."
    )
    webhook_allow_http: bool = Field(default=False, description="Allow plain-http callbacks.")
    webhook_max_response_bytes: int = Field(default=4096, ge=0, le=1 << 20)

    @field_validator("webhook_allow_cidrs", "webhook_deny_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value

    def egress_allowlist(self) -> Allowlist:
        return Allowlist.parse(
            self.webhook_allow_cidrs,
            self.webhook_allow_hosts,
            self.webhook_deny_cidrs,
            self.webhook_allow_http,
        )

    def job_bounds(self) -> JobBounds:
        """Per-RJ bounds; no RJ may ask for more GPUs than a cap could ever grant."""
        caps = [c for c in (self.max_gpus_per_job, self.max_gpus, self.max_gpus_per_namespace) if c]
        return JobBounds(min(caps, default=0), self.max_cpu_per_job, self.max_memory_per_job)


@lru_cache(maxsize=1)
def get_settings() -> OperatorSettings:
    """The process's settings, read once; tests build ``OperatorSettings(...)`` directly."""
    return OperatorSettings()
