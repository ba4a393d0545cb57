"""Two operator replicas configured as the chart configures them (a peering name, no priority).

Each replica draws its own random peering priority, so exactly one is active (equal priorities
made kopf pause them all). SIGKILL the active one: the stand-by takes over once the dead replica's
peering record expires, and every RJ still gets exactly one Job and one run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from localk8s import wait_for
from test_operator_lifecycle import (  # noqa: F401  (fixtures used by name)
    K,
    Operator,
    Script,
    k,
    photos,
    rj_body,
    script,
    start_operator,
)

pytestmark = [pytest.mark.k8s, pytest.mark.redis, pytest.mark.slow]

PEERING = "rollcall"
LIFETIME = 5


def _peering(api: client.ApiClient, namespace: str) -> None:
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
    )  # fmt: skip


def _full_log(op: Operator) -> str:
    return op.log.read_text(errors="replace")


def _priorities(api: client.ApiClient, namespace: str) -> dict[str, int]:
    """kopf's peering status: each live replica's identity (POD_ID, as the chart sets it) and the
    priority it drew."""
    peering: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[assignment]
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
    )
    return {peer: int(info["priority"]) for peer, info in (peering.get("status") or {}).items()}


def test_a_standby_replica_takes_over_from_a_killed_active_one_without_duplicates(
    k8s_api: client.ApiClient,
    namespace: str,
    k: K,  # noqa: F811
    start_operator: Callable[..., Operator],  # noqa: F811
    script: Script,  # noqa: F811
    photos: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _peering(k8s_api, namespace)
    chart_like: dict[str, Any] = {"peering_name": PEERING, "peering_lifetime_seconds": LIFETIME}
    replicas: dict[str, Operator] = {}
    for pod in ("operator-a", "operator-b"):
        monkeypatch.setenv("POD_ID", pod)  # the chart sets it from the pod's name
        replicas[pod] = start_operator(**chart_like)
    wait_for(lambda: set(_priorities(k8s_api, namespace)) == set(replicas), "both peers", 60)
    drawn = _priorities(k8s_api, namespace)
    # distinct random priorities: the higher one is active, the other stands by (a tie would
    # have paused both)
    assert len(set(drawn.values())) == 2, drawn
    active_id = max(drawn, key=lambda pod: drawn[pod])
    active = replicas[active_id]
    standby = next(op for pod, op in replicas.items() if pod != active_id)
    assert "Pausing all operators, including self" not in "".join(map(_full_log, replicas.values()))

    before = [f"before-{i}" for i in range(3)]
    for name in before:
        k.create(rj_body(name))
    for name in before:
        k.phase_is(name, "Succeeded")

    active.kill()
    after = [f"after-{i}" for i in range(4)]
    for name in after:
        k.create(rj_body(name))
    for name in after:
        k.phase_is(name, "Succeeded", timeout=LIFETIME * 6 + 60)
    assert "Resuming operations after the pause" in _full_log(standby)
    names = sorted([*before, *after])
    assert sorted(j.metadata.name for j in k.jobs()) == names
    assert all(script.seen[n] == 1 for n in names), script.seen
