"""kopf handlers: thin shells that hand events to the ``Runtime`` kept in ``memo``.

- startup/cleanup: kopf settings (no finalizers: deletion cascades through ownerReferences),
  clients, metrics, the queue seeded from the apiserver (once this replica is the active one);
- RJ events: keep the cache, the queue and webhook deliveries in step; the first event of an RJ
  admits it (validate, then queue or re-attach to an existing Job). No kopf change handler is
  registered, so kopf writes no diff-base or progress annotation to any RJ, and ``NoDiffBase``
  spares it building a diff base per event;
- ``spec.runPolicy.suspend`` changes (seen in RJ events, compared in memory, so no kopf field
  handler and no extra annotation write per RJ): suspend/resume the Job;
- Job events (our label only): fold the Job's state into its RJ's status;
- pod events (our label only): fold the pod's Job when the scheduler's verdict on the pod changes
  (Unschedulable and why, or placed at last), which changes nothing on the Job itself; and fail a
  pod stranded on an unreachable node (nodeloss.py), so its Job can retry elsewhere.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable
from typing import Any

import kopf
from prometheus_client import start_http_server

from rollcall_contract.model import GROUP, PLURAL, VERSION
from rollcall_operator.activity import Peering
from rollcall_operator.builder import MANAGED_SELECTOR
from rollcall_operator.runtime import Runtime
from rollcall_operator.settings import get_settings

RJ = (GROUP, VERSION, PLURAL)
# The cyclic GC's thresholds: a young collection per 50,000 net allocations instead of 700. Every
# watch event decodes into thousands of short-lived dicts that reference counting frees, yet at
# 700 they set off ~1,000 young and 8 full collections in a 1,000-RJ burst: 1.0 CPU-s of the
# operator's 3.9 (gc.callbacks). At 50,000: 0.45 CPU-s, same peak RSS (210 MiB); full collections
# still follow (after 10 x 10 young ones) to reclaim cycles.
GC_THRESHOLDS = (50_000, 10, 10)
JOBS = ("batch", "v1", "jobs")
PODS = ("", "v1", "pods")


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base, never built: no change handler is registered, so nothing reads it.

    kopf builds one for every event all the same (a deep copy of the whole body, managedFields
    and all): 45 % of kopf's per-event processing in a profiled 300-RJ burst. An empty essence
    and no stored one keep kopf's cause detection as it is, without the copy.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


class QuickProgress(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations, without clearing them from the diff base nobody builds.

    kopf clears progress keys from both diff-base essences on every event (a deep copy each);
    ``NoDiffBase`` makes them empty, so the copy is pure cost (2 % of a burst's samples).
    """

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence if not essence else super().clear(essence=essence)


def _rt(memo: kopf.Memo) -> Runtime:
    rt: Runtime = memo["rt"]
    return rt


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's ServiceAccount in a cluster, else $KUBECONFIG; no client library needed.

    kopf's default login goes through whichever client library happens to be importable; the
    operator image carries none of the ones it knows (and the sync client reads $KUBECONFIG at
    import time), so say how to log in instead of depending on what is installed.
    """
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    return info or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = get_settings()
    settings.persistence.progress_storage = QuickProgress(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
    # Our own Events say what happened; kopf's per-handler chatter would double the API calls.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # a stand-by replica takes over once the active one's record is this old (it refreshes it
    # well within the lifetime while alive)
    settings.peering.lifetime = ours.peering_lifetime_seconds
    settings.networking.connect_timeout = 10
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    rt = await Runtime.open(ours)
    memo["rt"] = rt
    # seeds and starts the loops now if this replica is active (standalone: always); a stand-by
    # starts them once it becomes active, and the liveness endpoint answers either way
    await rt.start(Peering.of(settings, ours.namespaces))
    # Objects made by start-up (modules, models, settings) live as long as the process: keep the
    # cyclic GC from rescanning them in every full collection, which in a 1,000-RJ burst showed
    # as allocation sites (a literal list in the Job builder) with 4 % of the samples (py-spy).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if "rt" in memo:
        await _rt(memo).close()


@kopf.on.probe(id="queue")
def probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Liveness payload: the queue's size (the endpoint answers only while the loop runs)."""
    queue = _rt(memo).admission.queue
    return {"waiting": len(queue.waiting), "running": len(queue.running)}


@kopf.on.probe(id="peering")
def peering(memo: kopf.Memo, **_: Any) -> str:
    """This replica's role: "active", or "standby" (alive too: the endpoint answers on it)."""
    return "active" if _rt(memo).active else "standby"


@kopf.on.event(*RJ)
async def rj_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        _rt(memo).rj_gone(body["metadata"]["uid"])
    else:
        await _rt(memo).rj_seen(dict(body))


@kopf.on.event(*JOBS, labels=MANAGED_SELECTOR)
async def job_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _rt(memo).job_seen(dict(body), deleted=type == "DELETED")


@kopf.on.event(*PODS, labels=MANAGED_SELECTOR)
async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _rt(memo).pod_seen(dict(body), deleted=type == "DELETED")
