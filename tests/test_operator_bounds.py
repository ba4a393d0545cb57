"""Per-RJ resource bounds (Kubernetes quantity grammar) and how a Job create refusal is worded."""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

import pytest

from rollcall_contract.model import Resources
from rollcall_operator.quantities import JobBounds, over_bounds, parse_quantity
from rollcall_operator.refusals import CREATE_FORBIDDEN, QUOTA_EXCEEDED, classify
from rollcall_operator.settings import OperatorSettings


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2), ("500m", Fraction(1, 2)), ("1.5", Fraction(3, 2)), ("999k", 999000),
     ("4Gi", 4 * 2**30), ("900Ti", 900 * 2**40), ("1e3", 1000), ("1E-3", Fraction(1, 1000)),
     ("64Mi", 64 * 2**20), ("100M", 10**8), ("0.5Gi", 2**29), (".5", Fraction(1, 2)),
     ("1Pi", 2**50), ("2n", Fraction(2, 10**9))],
)  # fmt: skip
def test_parse_quantity(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1GiB", "1 Gi", "1iK", "abc", "1e", "1e99", "--1"])
def test_parse_quantity_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


BOUNDS = JobBounds(max_gpus=2, max_cpu="8", max_memory="32Gi")


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"gpus": 1, "cpu": "2", "memory": "4Gi"}, None),
        ({}, None),  # the model's defaults: 1 GPU, 2 CPUs, 4Gi
        ({"cpu": "8000m", "memory": "32Gi"}, None),
        ({"cpu": "999k"}, "resources.cpu=999k exceeds the limit of 8"),
        ({"memory": "900Ti"}, "resources.memory=900Ti exceeds the limit of 32Gi"),
        ({"memory": "33Gi"}, "exceeds the limit of 32Gi"),
        ({"gpus": 3}, "resources.gpus=3 exceeds the limit of 2"),
        ({"cpu": "0"}, "must be positive"),
    ],
)
def test_over_bounds(resources: dict[str, Any], problem: str | None) -> None:
    got = over_bounds(Resources.model_validate(resources), BOUNDS)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got


def test_unbounded_settings_let_anything_the_schema_allows_through() -> None:
    assert over_bounds(Resources(cpu="999k", gpus=8), JobBounds()) is None


def test_settings_bound_gpus_by_the_smallest_cap() -> None:
    s = OperatorSettings(max_gpus=16, max_gpus_per_namespace=4, max_cpu_per_job="8")
    assert s.job_bounds() == JobBounds(4, "8", "")
    with pytest.raises(ValueError):
        OperatorSettings(max_memory_per_job="lots")


QUOTA_BODY = json.dumps({
    "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
    "message": 'jobs.batch "rj" is forbidden: exceeded quota: jobs, requested: '
               "count/jobs.batch=1, used: count/jobs.batch=1, limited: count/jobs.batch=1",
})  # fmt: skip
RBAC_BODY = json.dumps({
    "kind": "Status", "code": 403, "reason": "Forbidden",
    "message": 'jobs.batch is forbidden: User "system:serviceaccount:x:y" cannot create resource',
})  # fmt: skip


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (403, QUOTA_BODY, QUOTA_EXCEEDED),
        (403, QUOTA_BODY.encode(), QUOTA_EXCEEDED),
        (403, RBAC_BODY, CREATE_FORBIDDEN),
        (403, None, CREATE_FORBIDDEN),
        (500, QUOTA_BODY, None),
        (409, None, None),
    ],
)
def test_classify_refusals(status: int, body: str | bytes | None, reason: str | None) -> None:
    got = classify(status, body)
    assert (got.reason if got else None) == reason
    if got is not None and body:
        assert got.message == json.loads(body)["message"]
