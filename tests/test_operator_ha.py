"""Two operator replicas configured as the chart configures them (a peering name, no priority).

Each replica draws its own random peering priority, so exactly one is active (equal priorities
made kopf pause them all). SIGKILL the active one: the stand-by takes over once the dead replica's
peering record expires, and every RJ still gets exactly one Job and one run.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
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


def _role(op: Operator) -> str:
    """The replica's own word, from its liveness endpoint (kopf's JSON of the probe handlers)."""
    with urllib.request.urlopen(op.health, timeout=2) as resp:
        role: str = json.load(resp)["peering"]
    return role


def _fake_active_peer(api: client.ApiClient, namespace: str, present: bool) -> None:
    """Put (or take away) a live peer of the highest priority in the peering object: to every
    replica it is the active one, as long as it is there (an hour's lifetime)."""
    info = {"priority": 2**31, "lifetime": 3600, "lastseen": dt.datetime.now(dt.UTC).isoformat()}
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING,
        {"status": {"operator-x": info if present else None}},
    )  # fmt: skip


@pytest.mark.usefixtures("photos")
def test_a_standby_replica_writes_nothing_until_it_becomes_active(
    monkeypatch: pytest.MonkeyPatch,
    k8s_api: client.ApiClient,
    namespace: str,
    k: K,  # noqa: F811
    script: Script,  # noqa: F811
    start_operator: Callable[..., Operator],  # noqa: F811
) -> None:
    """RJs without a Job when a stand-by starts: it must not seed and create their Jobs (kopf
    pauses its event handlers, not what its startup handler starts); it creates them once it is
    the active one, and again after standing by and becoming active a second time."""
    _peering(k8s_api, namespace)
    _fake_active_peer(k8s_api, namespace, present=True)
    waiting = [f"waiting-{i}" for i in range(3)]
    for name in waiting:
        k.create(rj_body(name))
    monkeypatch.setenv("POD_ID", "operator-b")
    # health answers on a stand-by too (start_operator waits for it)
    standby = start_operator(peering_name=PEERING, peering_lifetime_seconds=LIFETIME)
    # whichever comes first: the stand-by's Jobs (the bug) or its word that it stands by
    wait_for(lambda: bool(k.jobs()) or "peering: standby" in _full_log(standby), "a verdict", 60)
    assert not k.jobs(), _full_log(standby)[-3000:]
    assert "seeded:" not in _full_log(standby)
    assert _role(standby) == "standby"

    _fake_active_peer(k8s_api, namespace, present=False)
    for name in waiting:
        k.phase_is(name, "Succeeded")
    assert "peering: active (operator-b)" in _full_log(standby)
    wait_for(lambda: _role(standby) == "active", "its probe to say so (kopf caches it 10 s)", 30)

    _fake_active_peer(k8s_api, namespace, present=True)
    wait_for(lambda: _full_log(standby).count("peering: standby") == 2, "standing by again", 60)
    k.create(rj_body("later"))  # kopf pauses the watch: only a re-seed or re-list finds it
    _fake_active_peer(k8s_api, namespace, present=False)
    k.phase_is("later", "Succeeded")
    names = sorted([*waiting, "later"])
    assert sorted(j.metadata.name for j in k.jobs()) == names
    assert all(script.seen[n] == 1 for n in names), script.seen
