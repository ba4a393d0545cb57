"""Prometheus metrics of the operator (served on ``metrics_port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RJS_BY_PHASE = Gauge(
    "rollcall_recognitionjobs", "RecognitionJobs seen by this operator, by phase", ["phase"]
)
STATUS_CONFLICTS = Counter(
    "rollcall_status_conflicts_total",
    "Conditional RJ status writes that lost a race and were recomputed from a fresh read",
)
JOBS_CREATED = Counter("rollcall_jobs_created_total", "batch/v1 Jobs created for RecognitionJobs")
TRANSITIONS = Counter(
    "rollcall_phase_transitions_total", "RecognitionJob phase transitions", ["phase"]
)
QUEUE_WAIT = Histogram(
    "rollcall_queue_wait_seconds",
    "From RecognitionJob creation to its Job's creation",
    buckets=(0.1, 0.5, 1, 2, 5, 15, 60, 300, 900, 3600, 14400),
)
RUN_TIME = Histogram(
    "rollcall_run_seconds",
    "From Job start to a terminal phase",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
QUEUE_LENGTH = Gauge("rollcall_queue_waiting", "RecognitionJobs waiting for a GPU slot")
RUNNING_SLOTS = Gauge("rollcall_queue_running", "Unfinished capped GPU Jobs holding a slot")
WEBHOOK_DELIVERIES = Counter("rollcall_webhook_deliveries_total", "Webhooks delivered")
WEBHOOK_FAILURES = Counter("rollcall_webhook_failures_total", "Failed webhook attempts", ["final"])
ACTIVE = Gauge(
    "rollcall_operator_active",
    "1 while this replica is the active one (kopf peering), 0 while it stands by",
)
