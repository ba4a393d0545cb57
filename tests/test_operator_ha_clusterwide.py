"""Two cluster-wide operator replicas, as the chart runs them with ``operator.clusterWide: true``.

No namespaces (kopf watches the whole cluster) and one ClusterKopfPeering instead of a KopfPeering
per namespace; each replica draws its own random priority, so exactly one is active. SIGKILL the
active one: the stand-by takes over once the dead replica's record expires, and every RJ, in either
of the test's two namespaces, gets exactly one Job and one run.

The control plane is the session's. The suite deletes each test's namespace without waiting, so
another test's RJs can linger (once for over a minute in CI), and a cluster-wide operator would
act on them: the test deletes those first and waits until none is left outside its own
namespaces, then checks that no Job appeared anywhere else while its replicas ran.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from localk8s import local_volume, restricted_namespace, wait_for
from nodeagent import NodeAgent
from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.admission import MANAGED_LABEL_SELECTOR
from test_operator_ha import _full_log, _role
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

LIFETIME = 5
KOPF = ("kopf.dev", "v1", "clusterkopfpeerings")


@pytest.fixture
def cluster_peering(k8s_api: client.ApiClient, crds: list[str], namespace: str) -> Iterator[str]:
    """This test's own ClusterKopfPeering (cluster-scoped, so named after the test's namespace)."""
    custom: Any = client.CustomObjectsApi(k8s_api)
    name = f"rollcall-{namespace}"[:253]
    custom.create_cluster_custom_object(
        *KOPF[:2], KOPF[2],
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}},
    )  # fmt: skip
    yield name
    with contextlib.suppress(ApiException):
        custom.delete_cluster_custom_object(*KOPF, name)


@pytest.fixture
def second_namespace(
    k8s_api: client.ApiClient,
    node_agent: NodeAgent,
    script: Script,  # noqa: F811
    tmp_path: Path,
) -> Iterator[K]:
    """A second namespace of this test's, with its own photos claim and the same script: only a
    cluster-wide replica handles its RJs."""
    name = f"t-clusterwide-other-{uuid.uuid4().hex[:6]}"
    restricted_namespace(k8s_api, name)
    local_volume(client.CoreV1Api(k8s_api), name, "photos", tmp_path / "other", read_only=True)
    node_agent.use(name, script)
    yield K(k8s_api, name)
    node_agent.use(name, None)
    with contextlib.suppress(ApiException):
        client.CoreV1Api(k8s_api).delete_namespace(name)


def _priorities(api: client.ApiClient, peering: str) -> dict[str, int]:
    """kopf's cluster-wide peering status: each live replica's identity and its priority."""
    body: dict[str, Any] = client.CustomObjectsApi(api).get_cluster_custom_object(  # type: ignore[assignment]
        *KOPF, peering
    )
    return {peer: int(info["priority"]) for peer, info in (body.get("status") or {}).items()}


def _rjs_elsewhere(api: client.ApiClient, ours: set[str]) -> list[str]:
    items = client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return [
        f"{m['namespace']}/{m['name']}"
        for m in (rj["metadata"] for rj in items["items"])  # type: ignore[index]
        if m["namespace"] not in ours
    ]


def _clear_rjs_elsewhere(api: client.ApiClient, ours: set[str]) -> None:
    """Delete the RJs earlier tests left outside ``ours`` (their namespaces are going, but the
    namespace controller may take minutes, as after CRDs came and went), with any finalizer an
    operator of theirs left: no operator runs now, and none would remove it."""
    custom = client.CustomObjectsApi(api)
    for ref in _rjs_elsewhere(api, ours):
        ns, name = ref.split("/", 1)
        with contextlib.suppress(ApiException):  # gone meanwhile
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": None}}
            )
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _jobs_elsewhere(api: client.ApiClient, ours: set[str]) -> dict[str, str]:
    """The operator's Jobs outside the test's namespaces, uid -> namespace/name."""
    batch: Any = client.BatchV1Api(api)
    jobs = batch.list_job_for_all_namespaces(label_selector=MANAGED_LABEL_SELECTOR)
    return {
        j.metadata.uid: f"{j.metadata.namespace}/{j.metadata.name}"
        for j in jobs.items
        if j.metadata.namespace not in ours
    }


def _last_word(op: Operator) -> str | None:
    """The role the replica's runtime last switched to, from its log: the probe's answer can be
    up to 10 s old (kopf caches it), so it may still say "active" after a switch to standby."""
    said = re.findall(r'"message": "peering: (active|standby) \(', _full_log(op))
    return said[-1] if said else None


def _roles(replicas: dict[str, Operator], of: Callable[[Operator], str | None]) -> dict[str, Any]:
    return {pod: of(op) for pod, op in replicas.items()}


@pytest.mark.usefixtures("photos")
def test_cluster_wide_standby_takes_over_from_a_killed_active_one_without_duplicates(
    k8s_api: client.ApiClient,
    namespace: str,
    cluster_peering: str,
    second_namespace: K,
    k: K,  # noqa: F811
    start_operator: Callable[..., Operator],  # noqa: F811
    script: Script,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = second_namespace
    ours = {namespace, other.ns}
    # other tests' namespaces are deleted without waiting: remove their RJs before watching all
    _clear_rjs_elsewhere(k8s_api, ours)
    wait_for(lambda: not _rjs_elsewhere(k8s_api, ours),
             f"other tests' RJs to go (at first: {_rjs_elsewhere(k8s_api, ours)})", 60)  # fmt: skip
    jobs_before = _jobs_elsewhere(k8s_api, ours)

    chart_like: dict[str, Any] = {
        "namespaces": [],  # the chart's clusterWide: kopf watches every namespace
        "peering_name": cluster_peering,
        "peering_lifetime_seconds": LIFETIME,
    }
    replicas: dict[str, Operator] = {}
    for pod in ("operator-a", "operator-b"):
        monkeypatch.setenv("POD_ID", pod)  # the chart sets it from the pod's name
        replicas[pod] = start_operator(**chart_like)
    wait_for(lambda: set(_priorities(k8s_api, cluster_peering)) == set(replicas), "both peers", 60)
    drawn = _priorities(k8s_api, cluster_peering)
    # distinct random priorities: the higher one is active, the other stands by (a tie would have
    # paused both)
    assert len(set(drawn.values())) == 2, drawn
    active_id = max(drawn, key=lambda pod: drawn[pod])
    standby_id = next(pod for pod in replicas if pod != active_id)
    expected = {active_id: "active", standby_id: "standby"}
    try:
        wait_for(lambda: _roles(replicas, _role) == _roles(replicas, _last_word) == expected,
                 f"one active replica ({expected}), on its probe and in its log", 30)  # fmt: skip
    except TimeoutError as e:
        raise AssertionError(f"{e}; now {_roles(replicas, _role)}") from e
    # a replica that started alone was active then: give each runtime two more checks of the
    # peering (every lifetime/3) to switch, and it must still agree
    time.sleep(2 * LIFETIME / 3 + 0.5)
    assert _roles(replicas, _last_word) == expected
    assert "Pausing all operators, including self" not in "".join(map(_full_log, replicas.values()))

    before = [f"before-{i}" for i in range(3)]
    for name in before:
        k.create(rj_body(name))
    other.create(rj_body("other-before"))
    for name in before:
        k.phase_is(name, "Succeeded")
    other.phase_is("other-before", "Succeeded")

    standby = replicas[standby_id]
    mark = len(_full_log(standby))  # it may have been active alone before its peer started
    replicas[active_id].kill()
    after = [f"after-{i}" for i in range(4)]
    for name in after:
        k.create(rj_body(name))
    other.create(rj_body("other-after"))
    for name in after:
        k.phase_is(name, "Succeeded", timeout=LIFETIME * 6 + 60)
    other.phase_is("other-after", "Succeeded")
    taken_over = _full_log(standby)[mark:]
    assert f"peering: active ({standby_id})" in taken_over
    assert "Resuming operations after the pause" in taken_over
    wait_for(lambda: _role(standby) == "active", "the survivor's probe to say active", 30)

    names = sorted([*before, *after])
    assert sorted(j.metadata.name for j in k.jobs()) == names
    assert sorted(j.metadata.name for j in other.jobs()) == ["other-after", "other-before"]
    assert all(script.seen[n] == 1 for n in [*names, "other-before", "other-after"]), script.seen
    # nothing of anyone else's was acted on
    made_elsewhere = set(_jobs_elsewhere(k8s_api, ours)) - set(jobs_before)
    assert not made_elsewhere, _jobs_elsewhere(k8s_api, ours)
