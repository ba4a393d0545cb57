"""Job pods stranded on a lost node: when to give up on them so their Job retries elsewhere.

A Job with a podFailurePolicy (ours: exit 42 fails the Job) replaces a pod only once it has failed:
its podReplacementPolicy is forced to ``Failed``. A pod evicted from an unreachable node keeps its
deletionTimestamp and phase Running for ever, because no kubelet is left to confirm, and PodGC
fails such pods only on a Node that was deleted or tainted out-of-service by a person. Until then
the RJ shows Running and waits for its activeDeadlineSeconds. Kueue's failure recovery does for
opted-in pods what ``LostPods`` does for ours: once the pod has been Terminating
``timeout`` seconds past its grace period *and* its Node is tainted unreachable, mark it Failed
(with a DisruptionTarget condition, so the Job's Ignore rule keeps it off the backoff count) and
remove it. A live kubelet finishes its own pods, so a reachable node's pods are never touched.

``stranded_at``, ``left_over``, ``unreachable`` and ``failed_status`` are pure; ``LostPods`` is the thin shell
fed by the operator's pod watch. The runtime owns it and feeds it only while its replica is the
active one: it cancels every follower on standing down (a stand-by writes nothing) and, on becoming
active, lists our pods once, since those stranded meanwhile had their events go to the replica that
was active then, which may have died with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp

from rollcall_operator.kube import ApiException, Kube
from rollcall_operator.times import now_iso

log = logging.getLogger("rollcall.operator.nodeloss")
UNREACHABLE = "node.kubernetes.io/unreachable"
REASON = "NodeLost"
# How often a due pod whose Node is not (yet) unreachable is looked at again.
RECHECK_SECONDS = 10.0


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def stranded_at(pod: Mapping[str, Any], timeout: float) -> dt.datetime | None:
    """When ``pod`` may be failed if its Node is unreachable by then; None if it never may.

    Only a bound pod being deleted and not yet finished qualifies; deletionTimestamp already
    includes the pod's grace period.
    """
    deletion = pod["metadata"].get("deletionTimestamp")
    if not deletion or not (pod.get("spec") or {}).get("nodeName"):
        return None
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    return _time(deletion) + dt.timedelta(seconds=timeout)


def left_over(pod: Mapping[str, Any]) -> bool:
    """A pod this operator marked Failed but did not get to remove: Terminating for ever.

    Marking and removing are two writes; a follower cancelled between them (its replica stood
    down) or a removal that failed leaves the pod Failed, so ``stranded_at`` no longer picks it
    up. The Job has already counted and replaced it, so removing it is all that is left.
    """
    status = pod.get("status") or {}
    return bool(
        pod["metadata"].get("deletionTimestamp")
        and (pod.get("spec") or {}).get("nodeName")
        and status.get("phase") == "Failed"
        and status.get("reason") == REASON
    )


def unreachable(node: Mapping[str, Any] | None) -> bool:
    """The node lifecycle controller's verdict: no heart-beat within its grace period."""
    taints = ((node or {}).get("spec") or {}).get("taints") or []
    return any(t.get("key") == UNREACHABLE for t in taints)


def failed_status(pod: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The status that ends a stranded pod: Failed, with a DisruptionTarget condition kept or added
    (the conditions list is replaced whole by a merge patch, so the others are carried over)."""
    node = pod["spec"]["nodeName"]
    conditions = [
        c for c in (pod.get("status") or {}).get("conditions") or []
        if c.get("type") != "DisruptionTarget" or c.get("status") != "True"
    ]  # fmt: skip
    disruption = next(
        (c for c in (pod.get("status") or {}).get("conditions") or []
         if c.get("type") == "DisruptionTarget" and c.get("status") == "True"),
        {"type": "DisruptionTarget", "status": "True", "reason": REASON,
         "message": f"node {node} is unreachable", "lastTransitionTime": now},
    )  # fmt: skip
    return {
        "phase": "Failed",
        "reason": REASON,
        "message": f"node {node} is unreachable; the pod was given up on by rollcall",
        "conditions": [*conditions, disruption],
    }


class LostPods:
    """One waiting task per stranded pod of ours; ``seen`` is called for every pod event."""

    def __init__(self, kube: Kube, timeout: float | None) -> None:
        self.kube = kube
        self.timeout = timeout
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def seen(self, pod: Mapping[str, Any], deleted: bool = False) -> None:
        """Follow a pod that may become stranded. A follower is never cancelled from here: the
        event of its own status write would otherwise stop it between marking the pod Failed and
        removing it; it ends by itself once the pod is gone or no longer stranded."""
        if self.timeout is None or deleted:
            return
        if stranded_at(pod, self.timeout) is None and not left_over(pod):
            return
        meta = pod["metadata"]
        if meta["uid"] not in self.tasks:
            follow = self._follow(meta["namespace"], meta["name"], meta["uid"])
            self.tasks[meta["uid"]] = asyncio.create_task(follow)

    async def close(self) -> None:
        """Cancel every follower (standing down, or shutting down), each at its next await.

        One cancelled between marking its pod Failed and removing it leaves the pod Failed and
        Terminating: the Job has counted it and retries; the replica active next finds it
        (``left_over``) when it lists our pods, and removes it.
        """
        for task in list(self.tasks.values()):
            task.cancel()
        for task in list(self.tasks.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, namespace: str, name: str, uid: str) -> None:
        assert self.timeout is not None  # seen() starts no task otherwise
        try:
            while not await self._step(namespace, name, uid, self.timeout):
                pass
        finally:
            if self.tasks.get(uid) is asyncio.current_task():
                del self.tasks[uid]

    async def _step(self, namespace: str, name: str, uid: str, timeout: float) -> bool:
        """One look at the pod: wait, fail it, or find it gone; True once nothing is left to do."""
        try:
            pod = await self.kube.read_pod(namespace, name)
            due = (
                None if pod is None or pod["metadata"]["uid"] != uid else stranded_at(pod, timeout)
            )
            if pod is not None and pod["metadata"]["uid"] == uid and left_over(pod):
                await self.kube.remove_pod(pod)
                log.warning(
                    "pod left Failed on an unreachable node removed",
                    extra={"namespace": namespace, "pod": name},
                )
                return True
            if pod is None or due is None:
                return True
            wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
                return False
            node = pod["spec"]["nodeName"]
            if not unreachable(await self.kube.read_node(node)):
                await asyncio.sleep(RECHECK_SECONDS)
                return False
            await self.kube.fail_pod(pod, failed_status(pod, now_iso()))
        except ApiException as e:
            if e.status != 409:  # 409: changed since read, look again at once
                log.warning("stranded pod: %s %s", e.status, e.reason, extra={"pod": name})
                await asyncio.sleep(RECHECK_SECONDS)
            return False
        except (
            aiohttp.ClientError,
            OSError,
            TimeoutError,
        ) as e:  # the apiserver is unreachable for a while
            log.warning("stranded pod: %s", type(e).__name__, extra={"pod": name})
            await asyncio.sleep(RECHECK_SECONDS)
            return False
        log.warning(
            "pod stranded on an unreachable node marked Failed; its Job retries",
            extra={"namespace": namespace, "pod": name, "node": node},
        )
        return True
