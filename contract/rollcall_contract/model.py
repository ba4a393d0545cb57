"""The RecognitionJob resource: the single source of truth for its spec and status.

The CRD schema in charts/rollcall/crds/ is generated from these models (see ``crd.py``) and the API
validates requests with them, so a field changes in one place. Field names are camelCase on the
wire (as Kubernetes users expect) and snake_case in Python.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "rollcall.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RecognitionJob"
PLURAL = "recognitionjobs"
SINGULAR = "recognitionjob"
SHORT_NAMES = ["rj"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Class codes and student ids come from school systems: letters, digits and . _ - only, so they are
# safe inside Redis keys, file names and label values.
IDENT = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
# A relative path inside the volume: no leading slash, no '..' segment.
SUB_PATH = r"^$|^[^/\x00](?:[^\x00]*)$"
QUANTITY = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
IDENT_MAX_LENGTH = 64
Ident = Annotated[str, Field(min_length=1, max_length=IDENT_MAX_LENGTH, pattern=IDENT)]
Quantity = Annotated[str, Field(min_length=1, max_length=32, pattern=QUANTITY)]

MAX_ROSTER = 2000
# The job gets the roster as one JSON environment variable, and Linux refuses to exec a process
# with any one environment string over 128 KiB (MAX_ARG_STRLEN: E2BIG, the pod never starts). 2000
# ids of 64 characters would be 136 KB; this many characters in all, plus the JSON's 4 per id,
# leave room to spare.
MAX_ROSTER_CHARS = 100_000


class Mode(StrEnum):
    IDENTIFY = "identify"
    ENROLL = "enroll"


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED})


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ImagesSource(_Model):
    """Where the class photos are: a PersistentVolumeClaim and a folder in it (read-only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.subPath) || !self.subPath.split('/').exists(s, s == '..')",
                    "message": "images.subPath must stay inside the volume: '..' is not allowed",
                    "fieldPath": ".subPath",
                },
            ]
        }
    )

    claim_name: DnsSubdomain = Field(description="PersistentVolumeClaim holding the photos.")
    sub_path: str = Field(
        default="",
        max_length=1024,
        pattern=SUB_PATH,
        description="Folder inside the claim; relative, without '..'. Enroll mode expects one "
        "sub-folder per student id.",
    )

    @model_validator(mode="after")
    def _no_parent_segments(self) -> ImagesSource:
        if ".." in self.sub_path.split("/"):
            raise ValueError("images.subPath must not contain '..' segments")
        return self


class Matching(_Model):
    """How probe faces are matched to the gallery; the model card supplies the default threshold."""

    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=4.0,
        description="Match threshold in the model's metric (distance for euclidean, 1-cosine for "
        "cosine); empty uses the model card's default.",
    )
    margin: float | None = Field(
        default=None,
        ge=0.0,
        le=4.0,
        description="Ambiguity margin in the threshold's units: a face names its nearest student "
        "only if the second-nearest student, and any other face's claim on that student, is at "
        "least this much farther; otherwise it needs review. Empty uses the model card's default.",
    )
    top_k: int = Field(default=1, ge=1, le=10, description="Candidates reported per face.")


class Resources(_Model):
    """Resources of the recognition container."""

    gpus: int = Field(default=1, ge=0, le=8, description="GPUs to request (0 runs on CPU).")
    cpu: Quantity = Field(default="2", description="CPU request and limit.")
    memory: Quantity = Field(default="4Gi", description="Memory request and limit.")


class RunPolicy(_Model):
    """Retry, deadline and clean-up policy of the Job."""

    backoff_limit: int = Field(
        default=2, ge=0, le=10, description="Retries after a transient failure."
    )
    active_deadline_seconds: int = Field(
        default=3600, ge=30, le=86400, description="Wall-clock limit of the Job, retries included."
    )
    ttl_seconds_after_finished: int = Field(
        default=86400,
        ge=0,
        le=2592000,
        description="Delete the finished Job (not the RJ) after this.",
    )
    queue_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="Fail the RJ if it waits Queued longer than this.",
    )
    suspend: bool = Field(default=False, description="Suspend (or keep from starting) the Job.")


# Address ranges no school's webhook receiver lives in (private, loopback, link-local incl. cloud
# metadata, CGNAT, documentation, multicast, reserved). The CRD refuses them as literal callback
# hosts; the operator's egress rules refuse them after DNS too (one list for both).
NON_PUBLIC_CIDRS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::/96", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8",
)  # fmt: skip
# CEL: a literal IP host must be public. `[x].all(h, ...)` binds the host once (CEL in CRDs has no
# let); evaluating url() inside the CIDR loop would blow the CRD's cost budget.
_CALLBACK_RULE = (
    "isURL(self.url) && [url(self.url).getHostname()].all(h, "
    "!(h.contains(':') || h.matches('^[0-9.]+$')) "
    "|| (isIP(h) && ip(h).isGlobalUnicast() && !["
    + ", ".join(f"'{c}'" for c in NON_PUBLIC_CIDRS)
    + "].exists(c, cidr(c).containsIP(h))))"
)


class Callback(_Model):
    """A completion webhook: POSTed once the RJ reaches a terminal phase, HMAC-SHA256 signed.

    The signing key is the namespace's own Secret, named by the operator's settings, never the RJ.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _CALLBACK_RULE,
                    "message": "callback.url must name a public host: private, loopback, "
                    "link-local and other non-public addresses are refused",
                    "fieldPath": ".url",
                },
            ]
        }
    )

    url: str = Field(
        max_length=2048,
        # https (or http where the operator allows it); no user:password@ before the host
        pattern=r"^https?://[^\s/?#@]+([/?#][^\s]*)?$",
        description="https URL of the receiver; the operator refuses non-public destinations.",
    )

    @model_validator(mode="after")
    def _public_literal_host(self) -> Callback:
        host = urlsplit(self.url).hostname or ""
        if ":" in host or re.fullmatch(r"[0-9.]+", host):
            try:
                addr = ipaddress.ip_address(host)
            except ValueError as e:
                raise ValueError("callback.url host is not a valid IP address") from e
            mapped = isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None
            if mapped or any(
                addr in ipaddress.ip_network(c) for c in NON_PUBLIC_CIDRS
                if ipaddress.ip_network(c).version == addr.version
            ):  # fmt: skip
                raise ValueError("callback.url must name a public host")
        return self


class Output(_Model):
    """What the job writes besides its summary."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.subPath) || !self.subPath.split('/').exists(s, s == '..')",
                    "message": "output.subPath must stay inside the volume: '..' is not allowed",
                    "fieldPath": ".subPath",
                },
                {
                    "rule": "!has(self.claimName) || (has(self.annotate) && self.annotate)",
                    "message": "output.claimName holds annotated photos: set output.annotate: true",
                    "fieldPath": ".claimName",
                },
            ]
        }
    )

    ttl_seconds: int = Field(
        default=604800, ge=60, le=7776000, description="How long results stay in Redis."
    )
    annotate: bool = Field(
        default=False, description="Write annotated copies of each photo (boxes, ids, scores)."
    )
    claim_name: DnsSubdomain | None = Field(
        default=None,
        description="PersistentVolumeClaim (writable) that keeps the annotated photos; without it "
        "they live in the pod's scratch space and go with the pod.",
    )
    sub_path: str | None = Field(
        default=None,
        max_length=1024,
        pattern=SUB_PATH,
        description="Folder inside output.claimName; relative, without '..'.",
    )

    @model_validator(mode="after")
    def _output_rules(self) -> Output:
        if self.sub_path and ".." in self.sub_path.split("/"):
            raise ValueError("output.subPath must not contain '..' segments")
        if self.claim_name is not None and not self.annotate:
            raise ValueError("output.claimName holds annotated photos: set output.annotate: true")
        return self


# Spec fields a running RJ may change; everything else is fixed once the Job is built from it.
MUTABLE_SPEC_FIELDS = frozenset({"runPolicy.suspend"})


class RecognitionJobSpec(_Model):
    """What to recognise, against which gallery, and how to run it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.mode != 'identify' "
                    "|| (has(self.roster) && size(self.roster) > 0)",
                    "message": "roster is required in identify mode: list the student ids "
                    "expected in this class",
                    "fieldPath": ".roster",
                    "reason": "FieldValueRequired",
                },
                {
                    "rule": "!has(self.roster) "
                    f"|| self.roster.map(s, size(s)).sum() <= {MAX_ROSTER_CHARS}",
                    "message": f"roster ids must total at most {MAX_ROSTER_CHARS} characters: "
                    "the job receives them in one environment variable",
                    "fieldPath": ".roster",
                },
            ]
        }
    )

    mode: Mode = Field(
        default=Mode.IDENTIFY, description="identify: take attendance; enroll: build the gallery."
    )
    class_code: Ident = Field(description="The class (or class period) the photos belong to.")
    images: ImagesSource
    roster: list[Ident] = Field(
        default_factory=list,
        max_length=MAX_ROSTER,
        description="Student ids expected in class; identify matches only against these.",
        # The apiserver itself rejects a repeated id ("Duplicate value"), at no CEL cost.
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    gallery: Ident | None = Field(
        default=None, description="Gallery name in Redis; defaults to classCode."
    )
    matching: Matching = Field(default_factory=Matching)
    model: DnsLabel = Field(default="default", description="Model card name.")
    resources: Resources = Field(default_factory=Resources)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    callback: Callback | None = None
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Higher runs first when queued."
    )
    queue: DnsLabel | None = Field(
        default=None, description="Kueue LocalQueue name, when Kueue runs."
    )
    output: Output = Field(default_factory=Output)

    @model_validator(mode="after")
    def _roster_rules(self) -> RecognitionJobSpec:
        if self.mode is Mode.IDENTIFY and not self.roster:
            raise ValueError("roster is required in identify mode")
        if len(set(self.roster)) != len(self.roster):
            raise ValueError("roster must not repeat a student id")
        if (chars := sum(map(len, self.roster))) > MAX_ROSTER_CHARS:
            raise ValueError(
                f"roster ids total {chars} characters, more than {MAX_ROSTER_CHARS}: the job "
                "receives them in one environment variable"
            )
        return self

    @property
    def gallery_name(self) -> str:
        return self.gallery or self.class_code


class Progress(_Model):
    done: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    text: str = Field(default="", description="done/total, for the PROGRESS column of kubectl.")


class Summary(_Model):
    """The job's outcome in numbers; copied from the container's termination message."""

    images: int = 0
    faces: int = 0
    matched: int = 0
    unknown: int = 0
    present: int = 0
    uncertain: int = Field(
        default=0, description="Students only faces needing review point at: a person decides."
    )
    absent: int = 0
    needs_review: int = Field(default=0, description="Faces the rule would not name.")
    errors: int = 0
    enrolled: int = 0
    rejected: int = 0


class Condition(_Model):
    type: str
    status: str = Field(pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class WebhookDelivery(_Model):
    delivered: bool = False
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_time: str | None = None
    final: bool = Field(default=False, description="No further attempt will be made.")


class RecognitionJobStatus(_Model):
    """Written by the operator only; the API and kubectl read it."""

    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    job_name: str | None = None
    model: str | None = Field(
        default=None,
        description="The model card the Job runs: spec.model, or the cluster's default for "
        "'default'. Unset for Jobs made by an operator from before this field.",
    )
    attempts: int = 0
    queued_time: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    progress: Progress = Field(default_factory=Progress)
    summary: Summary | None = None
    result_key: str | None = None
    reason: str | None = None
    message: str | None = None
    webhook: WebhookDelivery | None = None


def parse_spec(raw: dict[str, Any]) -> RecognitionJobSpec:
    """Validate a spec as read from the apiserver or a request body (camelCase keys)."""
    return RecognitionJobSpec.model_validate(raw)
