"""The operator's RJ cache: the newest body seen of each RJ, its spec parsed through the contract model.

Fed by the RJ watch and by the answers to the operator's own status writes, so folding a Job needs
no RJ read. A watch event older than what is held (the answer to our own patch can overtake the
event of an earlier write) never replaces it. The spec is parsed once per ``metadata.generation``
(status writes do not bump it), so readers get typed fields with the model's own defaults instead
of copying them by hand; a spec the model refuses is kept with its error (admission fails the RJ).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from rollcall_contract.model import TERMINAL_PHASES, Phase, RecognitionJobSpec, WebhookDelivery
from rollcall_operator import metrics
from rollcall_operator.status import unwritten as _unwritten


def resource_version(body: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd revisions are; anything else counts as unknown, 0)."""
    try:
        return int(body["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


def spec_error(error: ValidationError) -> str:
    """A status message for a refused spec: ``field.path: what is wrong`` per problem."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


def parse(
    body: Mapping[str, Any], previous: CachedRJ | None = None
) -> tuple[RecognitionJobSpec | None, str | None]:
    """(spec, error) of ``body``; reused from ``previous`` when its generation is the same."""
    if (
        previous is not None
        and previous.uid == body["metadata"]["uid"]
        and previous.generation == body["metadata"].get("generation")
        and previous.generation is not None
    ):
        return previous.spec, previous.spec_error
    try:
        return RecognitionJobSpec.model_validate(dict(body.get("spec") or {})), None
    except ValidationError as e:
        return None, spec_error(e)


def phase_label(phase: str | None) -> str:
    """The metrics label of a phase; an RJ without status (a CRD without its default) is "New"."""
    return phase or "New"


@dataclass(frozen=True)
class CachedRJ:
    """One RJ as last seen: the raw body (for patches and Job manifests) and typed views of it."""

    body: Mapping[str, Any]
    spec: RecognitionJobSpec | None  # None: the model refuses the spec (see ``spec_error``)
    spec_error: str | None = None

    @classmethod
    def of(cls, body: Mapping[str, Any], previous: CachedRJ | None = None) -> CachedRJ:
        spec, error = parse(body, previous)
        return cls(dict(body), spec, error)

    # --- metadata ---------------------------------------------------------------------------------
    @property
    def meta(self) -> Mapping[str, Any]:
        return self.body["metadata"]  # type: ignore[no-any-return]

    @property
    def uid(self) -> str:
        return str(self.meta["uid"])

    @property
    def namespace(self) -> str:
        return str(self.meta["namespace"])

    @property
    def name(self) -> str:
        return str(self.meta["name"])

    @property
    def generation(self) -> int | None:
        gen = self.meta.get("generation")
        return int(gen) if gen is not None else None

    @property
    def resource_version(self) -> int:
        return resource_version(self.body)

    @property
    def deleting(self) -> bool:
        return bool(self.meta.get("deletionTimestamp"))

    # --- spec (typed; the model's defaults apply) -------------------------------------------------
    @property
    def kueue(self) -> bool:
        """Kueue decides when its Job runs (``spec.queue`` names a LocalQueue)."""
        return self.spec is not None and self.spec.queue is not None

    @property
    def wants_suspend(self) -> bool:
        return self.spec is not None and self.spec.run_policy.suspend

    # --- status (raw for the pure patch functions in status.py, typed accessors for decisions) ----
    @property
    def status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}

    @property
    def phase(self) -> Phase | None:
        raw = self.status.get("phase")
        try:
            return Phase(raw) if raw else None
        except ValueError:
            return None

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def reason(self) -> str | None:
        return self.status.get("reason")

    @property
    def unwritten(self) -> bool:
        """No status written yet: none at all, or only the CRD's defaults (Pending)."""
        return _unwritten(self.status)

    @property
    def queued_time(self) -> str | None:
        return self.status.get("queuedTime")

    @property
    def webhook(self) -> WebhookDelivery:
        """What delivery of the completion webhook has done so far (nothing yet: the defaults)."""
        raw = self.status.get("webhook") or {}
        try:
            return WebhookDelivery.model_validate(raw)
        except ValidationError:
            # a record this operator did not write: trust none of it, retry nothing
            return WebhookDelivery(final=True)


class RJCache:
    """The newest CachedRJ per uid, and a gauge of how many RJs are in each phase."""

    def __init__(self) -> None:
        self._rjs: dict[str, CachedRJ] = {}

    def remember(self, body: Mapping[str, Any]) -> CachedRJ:
        """Keep ``body`` unless what is held is newer; the entry now held is returned."""
        uid = body["metadata"]["uid"]
        old = self._rjs.get(uid)
        if old is not None and old.resource_version > resource_version(body):
            return old  # a stale event after our own, newer patch response
        new = CachedRJ.of(body, old)
        self._rjs[uid] = new
        old_phase = old.status.get("phase") if old is not None else None
        new_phase = new.status.get("phase")
        if old is None or old_phase != new_phase:
            if old is not None:
                metrics.RJS_BY_PHASE.labels(phase_label(old_phase)).dec()
            metrics.RJS_BY_PHASE.labels(phase_label(new_phase)).inc()
        return new

    def forget(self, uid: str) -> CachedRJ | None:
        old = self._rjs.pop(uid, None)
        if old is not None:
            metrics.RJS_BY_PHASE.labels(phase_label(old.status.get("phase"))).dec()
        return old

    def clear(self) -> None:
        """Forget every RJ (a stand-by's cache is stale by the time it becomes active)."""
        for uid in list(self._rjs):
            self.forget(uid)

    def get(self, uid: str) -> CachedRJ | None:
        return self._rjs.get(uid)

    def __contains__(self, uid: object) -> bool:
        return uid in self._rjs

    def __len__(self) -> int:
        return len(self._rjs)

    def __iter__(self) -> Iterator[CachedRJ]:
        return iter(list(self._rjs.values()))

    def in_phase(self, phase: Phase) -> list[CachedRJ]:
        return [rj for rj in self._rjs.values() if rj.phase is phase]

    def with_reason(self, reason: str) -> list[CachedRJ]:
        return [rj for rj in self._rjs.values() if rj.reason == reason]
