"""Status writes under concurrency, against the real apiserver.

Two operator runtimes stand in for two writers that do not share a cache (fold vs admission, or two
replicas during a hand-over). Every write is conditional on the resourceVersion it was computed
from, so no increment is lost and no phase goes backwards; the CRD's transition rule refuses to
revive a finished RJ even for a writer that skips the precondition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client

from rollcall_contract.model import GROUP, PLURAL, VERSION, Phase
from rollcall_operator.cache import CachedRJ
from rollcall_operator.kube import ApiException
from rollcall_operator.runtime import Runtime
from rollcall_operator.settings import OperatorSettings

pytestmark = [pytest.mark.k8s, pytest.mark.redis]

# A phase may only move forward along this order (Queued and Pending may swap while waiting).
_RANK = {"Pending": 0, "Queued": 0, "Running": 1, "Succeeded": 2, "Failed": 2, "Cancelled": 2}


def _rj(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RecognitionJob",
        "metadata": {"name": name},
        "spec": {
            "classCode": "c1",
            "images": {"claimName": "photos"},
            "roster": ["s1"],
        },
    }


@pytest.fixture
async def runtimes(
    kubeconfig: Path, crds: list[str], namespace: str, redis_url: str
) -> AsyncIterator[tuple[Runtime, Runtime]]:
    settings = OperatorSettings(kubeconfig=kubeconfig, redis_url=redis_url, namespaces=[namespace])
    a, b = await Runtime.open(settings), await Runtime.open(settings)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _create(rt: Runtime, custom: client.CustomObjectsApi, ns: str, name: str) -> CachedRJ:
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _rj(name))
    rj = await rt.kube.read_rj(ns, name)
    assert rj is not None
    return CachedRJ.of(rj)


def _get(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, Any]:
    got = cast(
        dict[str, Any], custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    )
    return got


def _attempts(status: Mapping[str, Any]) -> dict[str, Any]:
    return {"attempts": int(status.get("attempts") or 0) + 1}


async def test_concurrent_increments_from_two_caches_are_never_lost(
    runtimes: tuple[Runtime, Runtime], k8s_api: client.ApiClient, namespace: str
) -> None:
    a, b = runtimes
    custom = client.CustomObjectsApi(k8s_api)
    rj = await _create(a, custom, namespace, "increments")
    a.cache.remember(rj.body)
    b.cache.remember(rj.body)
    rng = random.Random(7)

    async def writer(rt: Runtime, n: int) -> None:
        for _ in range(n):
            await asyncio.sleep(rng.random() * 0.01)
            assert await rt.status.write(rj, _attempts)

    await asyncio.gather(writer(a, 15), writer(b, 15))
    got = _get(custom, namespace, "increments")
    # each runtime only ever saw its own writes and its own re-reads: 30 means none was lost
    assert got["status"]["attempts"] == 30


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_fold_and_admission_racing_never_move_a_phase_backwards(
    runtimes: tuple[Runtime, Runtime], k8s_api: client.ApiClient, namespace: str, seed: int
) -> None:
    fold, admission = runtimes
    custom = client.CustomObjectsApi(k8s_api)
    name = f"race-{seed}"
    rj = await _create(fold, custom, namespace, name)
    fold.cache.remember(rj.body)
    admission.cache.remember(rj.body)
    rng = random.Random(seed)
    seen: list[str] = []

    async def watch() -> None:
        while True:
            got = await fold.kube.read_rj(namespace, name)
            phase = ((got or {}).get("status") or {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
            await asyncio.sleep(0.005)

    async def admit() -> None:
        # admission keeps saying "Queued" from whatever its own cache holds
        for i in range(12):
            await asyncio.sleep(rng.random() * 0.02)
            await admission.status.mark_queued(rj, "WaitingForSlot", f"round {i}")

    async def run() -> None:
        await asyncio.sleep(rng.random() * 0.05)
        await fold.status.set_phase(rj, Phase.RUNNING, "PodRunning", None)
        await asyncio.sleep(rng.random() * 0.05)
        await fold.status.set_phase(rj, Phase.SUCCEEDED, "Completed", None)

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.gather(admit(), run())
        await asyncio.sleep(0.05)
    finally:
        watcher.cancel()
    final = _get(custom, namespace, name)
    assert final["status"]["phase"] == "Succeeded"
    # a busy machine may let the 5 ms poll miss the last write; the final read still counts
    seen.append(final["status"]["phase"])
    ranks = [_RANK[p] for p in seen]
    assert ranks == sorted(ranks), f"phase went backwards: {seen}"


async def test_the_server_refuses_to_revive_a_finished_rj(
    runtimes: tuple[Runtime, Runtime], k8s_api: client.ApiClient, namespace: str
) -> None:
    a, _ = runtimes
    custom = client.CustomObjectsApi(k8s_api)
    rj = await _create(a, custom, namespace, "final")
    a.cache.remember(rj.body)
    await a.status.set_phase(rj, Phase.FAILED, "BadInput", "no photos")
    uid = rj.uid
    # a writer that skips every client-side check and the precondition
    with pytest.raises(ApiException) as err:
        await a.kube.patch_rj_status(namespace, "final", uid, {"phase": "Running"})
    assert err.value.status == 422
    assert "phase is final" in str(err.value.body)
    # the runtime's own writer meets the same refusal, re-reads and writes nothing
    assert not await a.status.write(rj, {"phase": "Queued"})
    got = _get(custom, namespace, "final")
    assert got["status"]["phase"] == "Failed"
