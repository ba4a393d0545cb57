"""Admission of RJs onto GPUs: a cap on unfinished GPU Jobs, globally and per namespace.

Pure bookkeeping, no I/O: the handlers tell it what exists (``hold``/``release``) and what waits
(``submit``/``withdraw``); one admission task asks it what may start now. Waiting RJs start in
priority order, then FIFO by creation time (kept in the apiserver, so the order survives an
operator restart). An RJ blocked only by its namespace's cap does not block other namespaces.
RJs for Kueue (``spec.queue``) or without GPUs bypass the cap: Kueue or nobody limits them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Entry:
    uid: str
    namespace: str
    name: str
    priority: int
    created: float  # unix seconds of metadata.creationTimestamp
    capped: bool  # counts against the caps (GPU Job not managed by Kueue)
    suspended: bool
    timeout: int | None  # spec.runPolicy.queueTimeoutSeconds
    body: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def order(self) -> tuple[int, float, str, str]:
        return (-self.priority, self.created, self.namespace, self.name)


def parse_time(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def entry_for(body: Mapping[str, Any]) -> Entry:
    """The queue entry of an RJ body (spec already validated by the CRD schema)."""
    meta, spec = body["metadata"], body.get("spec") or {}
    policy = spec.get("runPolicy") or {}
    gpus = int((spec.get("resources") or {}).get("gpus", 1))
    return Entry(
        uid=meta["uid"],
        namespace=meta["namespace"],
        name=meta["name"],
        priority=int(spec.get("priority", 0)),
        created=parse_time(meta.get("creationTimestamp")),
        capped=gpus > 0 and not spec.get("queue"),
        suspended=bool(policy.get("suspend", False)),
        timeout=policy.get("queueTimeoutSeconds"),
        body=body,
    )


@dataclass
class AdmissionQueue:
    max_running: int = 0  # 0: no cap
    max_running_per_namespace: int = 0
    running: dict[str, str] = field(default_factory=dict)  # uid -> namespace, capped Jobs only
    waiting: dict[str, Entry] = field(default_factory=dict)

    def _per_namespace(self) -> Counter[str]:
        return Counter(self.running.values())

    def hold(self, uid: str, namespace: str) -> None:
        """An unfinished capped Job exists for ``uid`` (seen at startup, or just admitted)."""
        self.waiting.pop(uid, None)
        self.running[uid] = namespace

    def release(self, uid: str) -> bool:
        """The Job finished or went away; True when that freed a slot."""
        return self.running.pop(uid, None) is not None

    def submit(self, entry: Entry) -> None:
        if entry.uid not in self.running:
            self.waiting[entry.uid] = entry

    def withdraw(self, uid: str) -> Entry | None:
        return self.waiting.pop(uid, None)

    def set_suspended(self, uid: str, suspended: bool) -> None:
        if (entry := self.waiting.get(uid)) is not None:
            self.waiting[uid] = replace(entry, suspended=suspended)

    def admissible(self) -> list[Entry]:
        """Entries that may start now, best first; they leave ``waiting`` and hold their slots."""
        per_ns = self._per_namespace()
        admitted: list[Entry] = []
        for entry in sorted(self.waiting.values(), key=lambda e: e.order):
            if entry.suspended:
                continue
            if entry.capped:
                if self.max_running and len(self.running) >= self.max_running:
                    break  # the global cap is full: nobody further down may jump the queue
                cap = self.max_running_per_namespace
                if cap and per_ns[entry.namespace] >= cap:
                    continue
                self.running[entry.uid] = entry.namespace
                per_ns[entry.namespace] += 1
            admitted.append(entry)
        for entry in admitted:
            del self.waiting[entry.uid]
        return admitted

    def expired(self, now: float) -> list[Entry]:
        """Waiting entries past their queueTimeoutSeconds; they leave ``waiting``."""
        gone = [
            e
            for e in self.waiting.values()
            if e.timeout is not None and now - e.created > e.timeout
        ]
        for entry in gone:
            del self.waiting[entry.uid]
        return gone

    def why_waiting(self, entry: Entry) -> tuple[str, str]:
        """(reason, message) for status while ``entry`` waits."""
        if entry.suspended:
            return "Suspended", "runPolicy.suspend is true; the Job is created once it is false"
        per_ns = self._per_namespace()
        if self.max_running and len(self.running) >= self.max_running:
            return (
                "WaitingForCapacity",
                f"{len(self.running)}/{self.max_running} GPU jobs are running cluster-wide",
            )
        cap = self.max_running_per_namespace
        if cap and per_ns[entry.namespace] >= cap:
            return (
                "WaitingForNamespaceCapacity",
                f"{per_ns[entry.namespace]}/{cap} GPU jobs are running in namespace "
                f"{entry.namespace}",
            )
        return "WaitingForTurn", "jobs ahead of this one start first"
