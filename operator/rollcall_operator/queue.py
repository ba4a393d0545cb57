"""Admission of RJs onto GPUs: caps on unfinished Jobs and on the GPUs they ask for, per namespace.

Pure bookkeeping, no I/O: the handlers tell it what exists (``hold``/``release``) and what waits
(``submit``/``withdraw``); one admission task asks it what may start now.

Fairness between schools (one namespace each): ``spec.priority`` and creation order (kept in the
apiserver, so the order survives an operator restart) rank RJs only *within* their namespace; across
namespaces the least-served one (fewest GPUs, then Jobs, held) goes next, so a school cannot jump
another with a high priority or a burst of submissions. A namespace whose own cap is full does not
block the others; when the cluster-wide cap is full nobody jumps the queue.

Every RJ counts: ``gpus: 0`` takes a Job slot (CPU is not free), a Kueue ``spec.queue`` still counts
unless the operator is configured to trust Kueue's own quotas (``trust_kueue``), since the submitter,
not the operator, chose to name a queue.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

from rollcall_operator.cache import CachedRJ
from rollcall_operator.times import parse_time


@dataclass(frozen=True)
class Entry:
    uid: str
    namespace: str
    name: str
    priority: int
    created: float  # unix seconds of metadata.creationTimestamp
    capped: bool  # counts against the caps (all but Kueue-managed RJs of a Kueue-trusting setup)
    suspended: bool
    timeout: int | None  # spec.runPolicy.queueTimeoutSeconds
    gpus: int = 1
    rj: CachedRJ | None = field(default=None, compare=False, repr=False)  # as it was submitted

    @property
    def order(self) -> tuple[int, float, str]:
        """Rank inside the entry's namespace (never across namespaces)."""
        return (-self.priority, self.created, self.name)


def entry_for(rj: CachedRJ, trust_kueue: bool = False) -> Entry:
    """The queue entry of an RJ, read from its spec as the contract model parsed it.

    Only an RJ whose spec the model accepts can queue (admission fails the others first).
    """
    spec = rj.spec
    if spec is None:
        raise ValueError(f"RJ {rj.namespace}/{rj.name} has an invalid spec: {rj.spec_error}")
    policy = spec.run_policy
    return Entry(
        uid=rj.uid,
        namespace=rj.namespace,
        name=rj.name,
        priority=spec.priority,
        created=parse_time(rj.meta.get("creationTimestamp")),
        capped=not (trust_kueue and spec.queue),
        suspended=policy.suspend,
        timeout=policy.queue_timeout_seconds,
        gpus=spec.resources.gpus,
        rj=rj,
    )


def job_slot(entry: Entry, job_suspended: bool, kueue: bool) -> str:
    """What an unfinished Job that already exists for ``entry`` means for the caps.

    "hold": it runs (or may run) and holds a slot; "park": its RJ suspended it, so it holds none
    (the slot goes to the next RJ); "wait": its RJ was resumed while the Job is still suspended,
    so it waits for a slot like a new RJ and is resumed on admission. Kueue's Jobs always "hold":
    Kueue, not the RJ's suspend, decides when they run.
    """
    if kueue:
        return "hold"
    if entry.suspended:
        return "park"
    return "wait" if job_suspended else "hold"


@dataclass(frozen=True)
class Slot:
    namespace: str
    gpus: int


@dataclass
class AdmissionQueue:
    max_running: int = 0  # unfinished Jobs cluster-wide; 0: no cap
    max_running_per_namespace: int = 0
    max_gpus: int = 0  # GPUs of unfinished Jobs cluster-wide; 0: no cap
    max_gpus_per_namespace: int = 0
    running: dict[str, Slot] = field(default_factory=dict)  # uid -> slot, capped Jobs only
    waiting: dict[str, Entry] = field(default_factory=dict)
    # namespace -> sequence number of its latest admission: among equally loaded schools the one
    # served longest ago goes first (creation times have 1 s resolution, so a burst would
    # otherwise tie and always favour the alphabetically first school).
    served: dict[str, int] = field(default_factory=dict)
    # Jobs and GPUs held per namespace, kept in step with ``running`` (``_take``/``_free``): every
    # admission round reads them, and summing a burst's 1,000 slots each round was quadratic.
    _jobs: Counter[str] = field(default_factory=Counter, init=False, repr=False, compare=False)
    _gpus: Counter[str] = field(default_factory=Counter, init=False, repr=False, compare=False)
    _turns: int = 0

    def __post_init__(self) -> None:
        for uid, slot in list(self.running.items()):
            self._take(uid, slot)

    def _usage(self) -> tuple[Counter[str], Counter[str]]:
        """(Jobs, GPUs) held per namespace."""
        return self._jobs, self._gpus

    def _take(self, uid: str, slot: Slot) -> None:
        self._free(uid)
        self.running[uid] = slot
        self._jobs[slot.namespace] += 1
        self._gpus[slot.namespace] += slot.gpus

    def _free(self, uid: str) -> bool:
        if (slot := self.running.pop(uid, None)) is None:
            return False
        self._jobs[slot.namespace] -= 1
        self._gpus[slot.namespace] -= slot.gpus
        return True

    def hold(self, uid: str, namespace: str, gpus: int = 1) -> None:
        """An unfinished capped Job exists for ``uid`` (seen at startup, or just admitted)."""
        self.waiting.pop(uid, None)
        self._take(uid, Slot(namespace, gpus))

    def release(self, uid: str) -> bool:
        """The Job finished or went away; True when that freed a slot."""
        return self._free(uid)

    def submit(self, entry: Entry) -> None:
        if entry.uid not in self.running:
            self.waiting[entry.uid] = entry

    def withdraw(self, uid: str) -> Entry | None:
        return self.waiting.pop(uid, None)

    def set_suspended(self, uid: str, suspended: bool) -> None:
        if (entry := self.waiting.get(uid)) is not None:
            self.waiting[uid] = replace(entry, suspended=suspended)

    def _global_full(self, gpus: int, extra_jobs: int = 1) -> str | None:
        total_gpus = sum(self._gpus.values())
        if self.max_running and len(self.running) + extra_jobs > self.max_running:
            return f"{len(self.running)}/{self.max_running} jobs are running cluster-wide"
        if self.max_gpus and total_gpus + gpus > self.max_gpus:
            return f"{total_gpus}/{self.max_gpus} GPUs are in use cluster-wide"
        return None

    def _namespace_full(self, entry: Entry, jobs: Counter[str], gpus: Counter[str]) -> str | None:
        ns, cap, gcap = entry.namespace, self.max_running_per_namespace, self.max_gpus_per_namespace
        if cap and jobs[ns] + 1 > cap:
            return f"{jobs[ns]}/{cap} jobs are running in namespace {ns}"
        if gcap and gpus[ns] + entry.gpus > gcap:
            return f"{gpus[ns]}/{gcap} GPUs are in use in namespace {ns}"
        return None

    def admissible(self) -> list[Entry]:
        """Entries that may start now, fairly across namespaces; they leave ``waiting``."""
        admitted = [e for e in self.waiting.values() if not e.capped and not e.suspended]
        lines: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.waiting.values():
            if entry.capped and not entry.suspended:
                lines[entry.namespace].append(entry)
        for line in lines.values():
            line.sort(key=lambda e: e.order, reverse=True)  # best last: pop() takes it
        jobs, gpus = self._usage()
        while True:
            ready = [ns for ns, line in lines.items() if line
                     and self._namespace_full(line[-1], jobs, gpus) is None]  # fmt: skip
            if not ready:
                break
            ns = min(
                ready,
                key=lambda n: (gpus[n], jobs[n], self.served.get(n, 0), lines[n][-1].created, n),
            )
            entry = lines[ns][-1]
            if self._global_full(entry.gpus) is not None:
                break  # the cluster-wide cap is full: nobody further down may jump the queue
            lines[ns].pop()
            self._turns += 1
            self.served[ns] = self._turns
            self._take(entry.uid, Slot(ns, entry.gpus))  # counted in ``jobs`` and ``gpus`` too
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
        jobs, gpus = self._usage()
        if (why := self._namespace_full(entry, jobs, gpus)) is not None:
            return "WaitingForNamespaceCapacity", why
        if (why := self._global_full(entry.gpus)) is not None:
            return "WaitingForCapacity", why
        return "WaitingForTurn", "jobs ahead of this one start first"
