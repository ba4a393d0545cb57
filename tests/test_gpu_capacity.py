"""GPU capacity across nodes: the real scheduler places GPU pods over four 2-GPU node agents.

The operator's own caps are off, so only the scheduler limits how many GPU RJs run: with more RJs
than GPUs, no node ever runs more GPU pods than it has GPUs (each node agent counts the GPUs its
running pods hold), and an RJ whose pod cannot be placed shows the scheduler's Unschedulable
reason in its status until a GPU frees, then runs and succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from localk8s import wait_for
from nodeagent import NodePool
from test_operator_lifecycle import (  # noqa: F401  (fixtures used by name)
    K,
    Operator,
    Script,
    k,
    photos,
    rj_body,
    start_operator,
)

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

NODES, GPUS = 4, 2
RJS = NODES * GPUS + 3  # three more than there are GPUs


def _running_gpus(pool: NodePool) -> dict[str, int]:
    return {a.name: a.gpus_in_use for a in pool.agents}


def _unschedulable(status: dict[str, Any], resource: str) -> bool:
    return bool(
        status.get("phase") == "Pending"
        and status.get("reason") == "Unschedulable"
        and f"Insufficient {resource}" in (status.get("message") or "")
    )


def test_more_gpu_rjs_than_gpus_never_overcommit_a_node_and_the_rest_wait_unschedulable(
    k: K, start_operator: Callable[..., Operator], photos: str,  # noqa: F811
    node_pool: Callable[..., NodePool],
) -> None:  # fmt: skip
    script = Script()
    pool = node_pool(script, nodes=NODES, gpus=GPUS)
    gpu = pool.agents[0].gpu_resource
    start_operator(node_selector=pool.node_selector, tolerations=pool.tolerations)
    names = [f"class-{i:02d}" for i in range(RJS)]
    for name in names:
        k.create(rj_body(name, "hold"))

    def phases() -> dict[str, str | None]:
        return {n: k.status(n).get("phase") for n in names}

    wait_for(
        lambda: (
            list(phases().values()).count("Running") == NODES * GPUS
            and sum(_running_gpus(pool).values()) == NODES * GPUS
        ),
        f"every GPU busy (phases {phases()}, GPUs {_running_gpus(pool)})",
        timeout=120,
    )
    waiting = [n for n, p in phases().items() if p != "Running"]
    assert len(waiting) == RJS - NODES * GPUS
    for name in waiting:

        def shows_reason(n: str = name) -> bool:
            return _unschedulable(k.status(n), gpu)

        wait_for(shows_reason, f"{name} shows the scheduler's reason (now {k.status(name)})")
        assert [p.spec.node_name for p in k.pods(name)] == [None]
    print(f"while all {NODES * GPUS} GPUs were busy: {k.status(waiting[0])['message']!r}")

    # free one GPU at a time: one waiting RJ (the scheduler picks which) runs on it, no more
    pending = set(waiting)
    for done in [n for n in names if n not in waiting][: len(waiting)]:
        script.release(done)
        k.phase_is(done, "Succeeded")

        def one_more_runs() -> list[str]:
            started = [n for n in pending if k.status(n).get("phase") == "Running"]
            return started if sum(_running_gpus(pool).values()) == NODES * GPUS else []

        wait_for(one_more_runs, f"a waiting RJ runs on the freed GPU ({phases()})", timeout=90)
        started = one_more_runs()
        assert len(started) == 1, started
        assert k.status(started[0]).get("reason") != "Unschedulable"
        pending.difference_update(started)
        assert all(_unschedulable(k.status(n), gpu) for n in pending)
    for name in names:
        script.release(name)
    for name in names:
        k.phase_is(name, "Succeeded", timeout=90)

    peaks = {a.name: a.gpu_peak for a in pool.agents}
    print(f"peak GPUs held at once per node: {peaks}; pods run per node: "
          f"{ {a.name: len(a.ran) for a in pool.agents} }")  # fmt: skip
    assert all(peak <= GPUS for peak in peaks.values()), peaks
    assert max(peaks.values()) == GPUS  # the check could have seen a full node
    assert sum(len(a.ran) for a in pool.agents) == RJS  # one pod per RJ, none elsewhere
    assert sorted(script.seen) == names
