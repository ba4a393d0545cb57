"""Erase a student's templates (every model's gallery of a class) and the results naming them.

Order of one student's erase: the tombstone, then the templates, then the results. The erase of
student S first records (S, now) in the class's tombstone hash (``keys.erased``), then finds the
class's galleries by SCAN (after the tombstone, so a gallery a running enrol job creates meanwhile
is either found here or the job sees the tombstone), removes S's templates, and scans the results.
Jobs running meanwhile read the tombstones after they publish (``rollcall_job.recheck`` has the
ordering argument) and drop S from their results, roster and enrolment, so the erase wins even
where it found nothing: a roster id without a template, or a first enrolment of S whose template
is written after the erase looked. The stamp (this replica's clock, ms) also lets a job submitted
before the erase but started after it (queued, or a retried pod) drop S: it compares the stamp
with its RJ's creationTimestamp. A whole-class erase writes the class-wide tombstone
``CLASS_WIDE`` first, then deletes the galleries (see ``erase_class``).

Everything is inside the caller's tenant (``rollcall:<namespace>:``), so another school's class of
the same name is never touched and looks like a class that does not exist.

Galleries: per model, one WATCH/MULTI/EXEC removes the student's field from the gallery hash,
deletes the packed copy and bumps meta's ``updated``. The job's loader trusts the packed copy only
when its stamp equals ``updated`` and its size equals HLEN (``rollcall_job.gallery.unpack``); with
no packed copy it reads the hash itself, so a job started after the erase cannot see the student.
The next enrolment writes a fresh packed copy.

Results: a results hash that names the student (as a string value, a key, or the first folder of
a photo path) is deleted whole, each under WATCH. Why drop rather than rewrite: the documents'
shape grows with the job (``uncertain`` is being added, enrolment reports key by student and
name photos ``<student>/<file>``), and a rewrite that misses one new field would keep the id
while reporting it erased; results are short-lived (TTL, 7 days by default) and already delivered
(GET, webhook), so losing a whole result is the smaller harm. In-flight staging hashes are left
alone. A job still running re-reads the gallery and the tombstones after it publishes and
publishes again without anyone gone (``rollcall_job.recheck``), so the order here is part of the
contract: the tombstone first, the galleries' SCAN and HDEL next, the results scan last; either
the job's re-read sees the tombstone (or the HDEL), or its publish came before the scan, which
then deletes it.

Replicas: an erase answers 200 only once the primary's replicas hold it. Replication is
asynchronous, so a primary that dies after applying an erase but before its replicas got it
hands a failover (Sentinel, Cluster) a replica with the template and no tombstone: the erased
child would be matched again. So after its writes the erase asks the primary (``INFO
replication``, ``connected_slaves``) how many replicas it has and waits (``WAIT n timeout``) for
``n`` of them (``replicas``: all those connected by default, a fixed number, or 0: never wait).
A primary without replicas (the chart's bundled Redis, the tests' redis-server) costs that one
INFO and answers as before. Fewer acknowledgements in time: 503 with Retry-After, the erase
applied on the primary and not confirmed; the same DELETE repeated is idempotent.

What WAIT guarantees (redis.io/commands/wait): it blocks the calling connection until ``n``
replicas acknowledged every write *that connection* made before it, and returns how many did,
also on timeout. It counts the replication offset of the connection's last write, and a primary's
replication stream is one ordered log, so a replica that acknowledged that offset has received
every earlier write of that primary, made on any connection. redis-py's WATCH pipelines each take
a pooled connection of their own, so the writes above are not pinned to one; instead the wait is
one non-transactional pipeline (one connection) holding a fresh write of ours, the ``unconfirmed``
marker below, followed by WAIT: the acknowledged offset covers the marker, hence every erase write
before it. That proves the replicas hold what the primary the pipeline runs on holds; the same
pipeline therefore first reads the erase back there (:class:`Expect`, see :meth:`Eraser.confirm`),
since after a failover it may run on a promoted replica that never got the writes. What it does
not guarantee: WAIT is not consensus. A replica that acknowledged can
still lose the promotion to one that did not (Sentinel and Cluster prefer the replica with the
highest offset they can reach: best effort), an acknowledging replica that dies too takes the
erase with it (no persistence is awaited), and with ``all`` a replica disconnected at that moment
is not counted, yet Sentinel may promote it if its link was down only briefly: set a fixed number
to demand that many. A replica still in its first full sync is counted (promoted now, it would
serve the data it had before), so erases answer 503 until it is online.

Unconfirmed erases (:func:`unconfirmed_key`): the fresh write is ``HSET <class's unconfirmed
hash> <student or *> <marker>`` (the hash lives ``ERASED_TTL_SECONDS``), its field removed once
WAIT succeeded. The marker (:class:`Marker`) holds the erase's counts, its time and the hash slots
it wrote. A repeated DELETE finds the templates and results gone and would answer 404; an erase
that found nothing takes the marker's counts if the marker is at most ``MARKER_FRESH_SECONDS``
old (:func:`fresh_marker`), and answers 200 once its own WAIT succeeds. An older marker (an erase
answered 503 and never repeated) is ignored: the erase that finds nothing answers 404, as if it
were not there, and drops it once confirmed. Each repeat rewrites the tombstone and the marker, so
WAIT always has a fresh write to count. After a failover that lost the first attempt the repeat
finds the template on the promoted replica and erases it again.

Redis Cluster: WAIT counts one primary's replicas, so the erase waits on every primary it wrote
to: the one holding the class's tombstone and marker (slot ``{<class>}``), each changed model's
gallery (``{<class>:<model>}``) and each deleted result (``{<uid>}``), plus those of the slots a
fresh marker recorded (a repeat waits for what the attempt before it wrote). On the marker's
primary the fresh write is the marker; on each other one it is ``SET`` of a short-lived key of
ours (:func:`wait_key`, a hash tag picked to land on that primary: WAIT is per connection, not
per slot), each followed by WAIT on that connection, all primaries at once (one cluster pipeline:
one connection per node). Confirmed only if every primary's replicas confirm; the 503 counts the
replicas of all of them. A result's own slot would need a key beside ``job:{<uid>}:results``,
which the API's ACL does not grant (only the result itself, which the erase has just deleted);
any key on the same primary serves WAIT as well, and ``wait_key`` is under the ACL's
``gallery:`` pattern. Standalone and Sentinel: one node, one marker, one WAIT.

Slots moving under an erase (Cluster resharding): the primaries are planned from redis-py's slot
map after the writes. A write redirected by MOVED updated that map first. A write redirected by
ASK (its key already migrated, the slot not yet handed over) would not have, and would be waited
on at the old primary; but every erase write is a WATCH/MULTI transaction, which redis-py does not
follow through ASK (AskError): such an erase answers 503 until the migration ends, and its repeat
then waits on the new primary (tests/test_erase_cluster_replicas.py migrates a gallery's slot with
the new primary's replica stopped). Keep erase writes transactional.

Redis commands used (the API's ACL user needs them on ``rollcall:<tenant>:*``): SCAN, WATCH,
UNWATCH, MULTI, EXEC, HEXISTS, HLEN, HGET, HDEL, HSET, DEL, HGETALL, EXPIRE, SET (Cluster's wait
keys); and, keyless, WAIT and INFO (the replication section only: ``+info|replication``). No
scripts. Nothing here reads, logs or returns a template; the unconfirmed marker holds counts,
model ids, a time and slot numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import WatchError

from rollcall_api.errors import ApiError
from rollcall_api.store import redis_unavailable
from rollcall_contract import keys, redisclient
from rollcall_contract import results as results_codec

log = logging.getLogger("rollcall_api.erasure")

_RETRIES = 5
_SCAN_COUNT = 1000

# Declared with the key layout (``rollcall_contract.keys``): the jobs read the same.
ERASED_TTL_SECONDS = keys.ERASED_TTL_SECONDS
CLASS_WIDE = keys.ERASED_CLASS_WIDE
# Replicas an erase waits for (WAIT) by default: every one the primary reports connected.
ALL_REPLICAS: Literal["all"] = "all"
REPLICA_TIMEOUT_MS = 2000
# How long an unconfirmed erase's counts answer a repeat that finds nothing (then: 404). Minutes:
# a client repeats a 503 within seconds (Retry-After; the CLI's --wait), not a day later.
MARKER_FRESH_SECONDS = 600
# The unconfirmed-erase hash and the Cluster wait keys live with the key layout.
unconfirmed_key = keys.erased_unconfirmed
wait_key = keys.erase_wait


def wanted_replicas(setting: int | Literal["all"], connected: int) -> int:
    """How many replicas an erase waits for: ``connected`` for ``all``, else the setting (0: none).
    A fixed number above ``connected`` is kept: fewer replicas than asked for is not a success."""
    return connected if setting == ALL_REPLICAS else setting


def connected_replicas(info: object) -> int:
    """``connected_slaves`` of a parsed ``INFO replication`` reply (0 if absent)."""
    if not isinstance(info, Mapping):
        return 0
    return int(info.get("connected_slaves", 0))


def unconfirmed_message(acked: int, wanted: int) -> str:
    """The 503's text: what happened, and that repeating the request is safe."""
    return (
        f"erased on the primary, not yet confirmed by {wanted - acked} of {wanted} replicas; "
        "repeat the same DELETE, it is idempotent"
    )


INTERRUPTED_MESSAGE = (
    "the erase is not on the Redis primary that was to confirm it (a failover during the erase?); "
    "repeat the same DELETE, it is idempotent"
)


@dataclass(frozen=True)
class Expect:
    """What one key shows on a primary that holds the erase: a hash ``field`` present (the
    tombstone) or absent (the template), or, without a field, the key empty or gone (a deleted
    gallery or result). Read in the confirmation pipeline, on the node it then WAITs on."""

    key: str
    field: str | None = None
    present: bool = False

    def command(self) -> tuple[str, ...]:
        """HEXISTS or HLEN (the API's ACL has both; an absent key has HLEN 0)."""
        return ("HEXISTS", self.key, self.field) if self.field is not None else ("HLEN", self.key)

    def holds(self, reply: object) -> bool:
        value = int(reply)  # type: ignore[call-overload]
        return bool(value) == self.present if self.field is not None else value == 0


@dataclass(frozen=True)
class ClassKeys:
    """The keys of one class's gallery for one model."""

    model_id: str
    gallery: str
    meta: str
    packed: str


def class_keys(tenant: str, class_name: str, found: list[str]) -> dict[str, ClassKeys]:
    """Model id -> keys, from SCAN results of :func:`class_pattern` (anything else is ignored)."""
    head = keys.gallery(tenant, class_name, "m")[: -len("m}")]  # rollcall:<t>:gallery:{<class>:
    out: dict[str, ClassKeys] = {}
    for key in found:
        if not key.startswith(head):
            continue
        model_id = key[len(head) :].split("}", 1)[0]
        try:
            gkey = keys.gallery(tenant, class_name, model_id)
        except ValueError:
            continue
        if key not in (gkey, f"{gkey}:meta", f"{gkey}:packed"):
            continue
        out[model_id] = ClassKeys(
            model_id,
            gkey,
            keys.gallery_meta(tenant, class_name, model_id),
            keys.gallery_packed(tenant, class_name, model_id),
        )
    return dict(sorted(out.items()))


def class_pattern(tenant: str, class_name: str) -> str:
    """SCAN MATCH for every key (hash, meta, packed) of every model's gallery of one class."""
    return keys.gallery_match(tenant, class_name) + "*"


def results_pattern(tenant: str) -> str:
    """SCAN MATCH for the published results of every job of the tenant (not staging hashes)."""
    return f"{keys.glob_escape(keys.tenant_prefix(tenant))}job:*:results"


def mentions(fields: Mapping[str, str], student: str) -> bool:
    """Whether a results hash names ``student``; an undecodable one counts as naming them.

    A student id is a plain token (no quote, no slash), so in the JSON text it appears as the
    string ``"<id>"`` (a value or a key) or as a path starting ``"<id>/``.
    """
    try:
        documents = results_codec.decode_results(fields)
    except results_codec.IncompleteResults:
        return True
    text = json.dumps(documents)
    quoted = json.dumps(student)
    return quoted in text or f"{quoted[:-1]}/" in text


def stale_tombstones(fields: Mapping[str, str], now_ms: int, ttl_seconds: int) -> set[str]:
    """The ids whose tombstone is older than ``ttl_seconds`` (or unreadable): pruned by the next
    erase, as no job still running can need them."""
    oldest = now_ms - ttl_seconds * 1000
    return {s for s, v in fields.items() if (ms := keys.tombstone_ms(v)) is None or ms < oldest}


@dataclass
class Erasure:
    """What an erase removed: counts and model ids only, never a template."""

    models: list[str] = field(default_factory=list)
    templates: int = 0
    results: int = 0
    class_found: bool = False

    @property
    def found(self) -> bool:
        """Whether this erase removed anything (else the route answers 404)."""
        return bool(self.templates or self.results or self.models)


@dataclass(frozen=True)
class Marker:
    """An unconfirmed erase: its counts, when it was written (this replica's clock, unix ms) and
    the hash slots it wrote (on Cluster a repeat waits on their primaries too). No template, no
    id but model ids."""

    erasure: Erasure
    at_ms: int
    slots: tuple[int, ...] = ()

    def value(self) -> str:
        data = {**asdict(self.erasure), "at_ms": self.at_ms, "slots": list(self.slots)}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def parse(cls, value: str) -> Marker | None:
        """The marker a field holds; None if it is not one (then it is ignored)."""
        try:
            data = json.loads(value)
            erasure = Erasure(
                models=[str(m) for m in data["models"]],
                templates=int(data["templates"]),
                results=int(data["results"]),
                class_found=bool(data["class_found"]),
            )
            return cls(erasure, int(data["at_ms"]), tuple(int(s) for s in data["slots"]))
        except (ValueError, KeyError, TypeError):
            return None


def fresh_marker(
    marker: Marker | None, now_ms: int, fresh_seconds: int = MARKER_FRESH_SECONDS
) -> Marker | None:
    """``marker`` if it was written at most ``fresh_seconds`` ago (either way: another replica's
    clock may run ahead), else None: an erase left unconfirmed and not repeated in time no longer
    lends its counts (a later erase that finds nothing is a 404) nor its slots."""
    if marker is None or abs(now_ms - marker.at_ms) > fresh_seconds * 1000:
        return None
    return marker


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


class Eraser:
    """The Redis side of erasure, for one tenant at a time."""

    def __init__(
        self,
        redis: Redis,
        replicas: int | Literal["all"] = ALL_REPLICAS,
        timeout_ms: int = REPLICA_TIMEOUT_MS,
    ) -> None:
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    async def _scan(self, pattern: str) -> list[str]:
        return [_text(k) async for k in self.redis.scan_iter(match=pattern, count=_SCAN_COUNT)]

    async def _class(self, tenant: str, class_name: str) -> dict[str, ClassKeys]:
        return class_keys(tenant, class_name, await self._scan(class_pattern(tenant, class_name)))

    async def erase_student(self, tenant: str, class_name: str, student: str) -> Erasure:
        out = Erasure()
        # what the erase leaves, checked where it is confirmed; Cluster waits on each key's node
        expects = [Expect(keys.erased(tenant, class_name), student, present=True)]
        try:
            # first: a job of the class running now drops the student even where nothing is
            # found below (a roster id, a first enrolment): the module docstring, and recheck's
            await self._tombstone(tenant, class_name, student)
            galleries = await self._class(tenant, class_name)
            out.class_found = bool(galleries)
            for ck in galleries.values():
                if await self._drop_template(ck, student):
                    out.models.append(ck.model_id)
                    out.templates += 1
                    expects.append(Expect(ck.gallery, student))
            # Results too when the class gallery is gone (erased earlier): they may still name them.
            for key in await self._scan(results_pattern(tenant)):
                if await self._drop_results(key, student):
                    out.results += 1
                    expects.append(Expect(key))
            # last: the replicas hold all of the above, or 503 (the module docstring)
            return await self.confirm(tenant, class_name, student, out, expects)
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None

    def _tag_on(self, cluster: RedisCluster, tenant: str, node: ClusterNode) -> str:
        """A hash tag whose :func:`wait_key` lands on ``node`` (small numbers, tried in order:
        a primary serving a third of the slots takes about three tries)."""
        for n in range(1_000_000):
            slot = cluster.keyslot(wait_key(tenant, str(n)))
            if cluster.nodes_manager.get_node_from_slot(slot).name == node.name:
                return str(n)
        raise LookupError("no hash tag lands on this primary")  # crc16 covers every slot first

    async def _wanted(self, **node: Any) -> int:
        """How many replicas to wait for on one primary (``INFO replication`` there)."""
        if self.replicas == 0:
            return 0
        info = await self.redis.execute_command(  # type: ignore[no-untyped-call]
            "INFO", "replication", **node
        )
        return wanted_replicas(self.replicas, connected_replicas(info))

    async def _waits(
        self, tenant: str, marker: str, slots: Iterable[int]
    ) -> list[tuple[str, dict[str, Any], int]]:
        """(key of the fresh write, target, replicas wanted) per primary to wait on: the marker's
        first; on Cluster then one per other primary holding one of ``slots``."""
        if not isinstance(self.redis, RedisCluster):
            return [(marker, {}, await self._wanted())]
        cluster = self.redis
        home = cluster.get_node_from_key(marker)
        nodes = {home.name: home}
        for slot in slots:
            node = cluster.nodes_manager.get_node_from_slot(slot)
            nodes.setdefault(node.name, node)
        wanted = await asyncio.gather(*(self._wanted(target_nodes=n) for n in nodes.values()))
        return [
            (
                marker
                if name == home.name
                else wait_key(tenant, self._tag_on(cluster, tenant, node)),
                {"target_nodes": node},
                n,
            )
            for (name, node), n in zip(nodes.items(), wanted, strict=True)
        ]

    async def confirm(
        self, tenant: str, class_name: str, target: str, out: Erasure, expects: Iterable[Expect]
    ) -> Erasure:
        """Wait for the replicas of every primary the erase wrote to; 503 if too few confirm in
        time, or if a primary does not show the erase (``expects``).

        An erase that found nothing takes the counts of a fresh unconfirmed one of ``target`` (its
        marker), so the repeat of a DELETE answered 503 answers 200 with what was erased; every
        erase waits too on the slots that marker wrote.

        Why read the erase back: WAIT proves the replicas hold what the primary it runs on holds,
        not that this primary took the erase. A failover between the writes and this pipeline
        (redis-py's cluster client retries a failed pipeline on the new primary; a Sentinel pool
        reconnects to the new master) would run it on a promoted replica that never got them. So
        the pipeline reads, on each node before its WAIT, that the tombstone is there and the
        templates and results are gone: otherwise 503 ``erase_interrupted``, and the repeat erases
        on the new primary."""
        expects = list(expects)
        written = [e.key for e in expects]
        marker = unconfirmed_key(tenant, class_name)
        raw = await self.redis.hget(marker, target)
        now_ms = int(time.time() * 1000)
        earlier = fresh_marker(Marker.parse(_text(raw)) if raw is not None else None, now_ms)
        if earlier is not None and not out.found:  # a found erase reports its own counts
            out = earlier.erasure
        slots = {key_slot(k.encode()) for k in written} | set(earlier.slots if earlier else ())
        waits = await self._waits(tenant, marker, slots)
        if not any(wanted for _, _, wanted in waits):
            if raw is not None:  # confirmed by nobody, as asked: done, a next erase is a 404
                await self.redis.hdel(marker, target)
            return out
        # per primary, one connection: the fresh write, then its WAIT (a cluster pipeline sends
        # each node's commands on one connection, the nodes at once)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(marker, target, Marker(out, now_ms, tuple(sorted(slots))).value())
        pipe.expire(marker, ERASED_TTL_SECONDS)
        for expect in expects:  # each node's reads go before its WAIT (one connection per node)
            pipe.execute_command(*expect.command())
        calls = 2 + len(expects)
        at: list[tuple[int, int]] = []  # (index of a WAIT's reply, replicas it wants)
        for key, node, wanted in waits:
            if wanted == 0:
                continue
            if key != marker:
                pipe.set(key, str(now_ms), ex=redisclient.WAIT_KEY_TTL_SECONDS)
                calls += 1
            pipe.execute_command("WAIT", wanted, self.timeout_ms, **node)
            at.append((calls, wanted))
            calls += 1
        replies = await pipe.execute()
        shown = [e.holds(r) for e, r in zip(expects, replies[2 : 2 + len(expects)], strict=True)]
        if not all(shown):
            log.warning(
                "erase not on the primary that confirms it",
                extra={"missing": shown.count(False), "checked": len(shown)},
            )
            raise ApiError(
                503, INTERRUPTED_MESSAGE, code="erase_interrupted", headers={"Retry-After": "1"}
            )
        acked = sum(min(int(replies[i]), n) for i, n in at)  # a spare replica covers no other node
        wanted = sum(n for _, n in at)
        if acked < wanted:
            log.warning(
                "erase not confirmed by replicas",
                extra={"acked": acked, "wanted": wanted, "primaries": len(at)},
            )
            retry = str(max(1, math.ceil(self.timeout_ms / 1000)))
            raise ApiError(
                503,
                unconfirmed_message(acked, wanted),
                code="erase_unconfirmed",
                headers={"Retry-After": retry},
            )
        await self.redis.hdel(marker, target)
        return out

    async def _tombstone(self, tenant: str, class_name: str, student: str) -> None:
        """Record the erase of ``student`` (or ``CLASS_WIDE``) in the class's tombstone hash
        (``keys.erased``), pruning stale ones, and renew the hash's TTL; WATCHed, so a concurrent
        erase's fresh tombstone is never pruned."""
        key = keys.erased(tenant, class_name)
        for _ in range(_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hgetall(key)
                    now_ms = int(time.time() * 1000)
                    fields = {_text(k): _text(v) for k, v in raw.items()}
                    stale = stale_tombstones(fields, now_ms, ERASED_TTL_SECONDS) - {student}
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, student, keys.tombstone(now_ms))
                    if stale:
                        pipe.hdel(key, *sorted(stale))
                    pipe.expire(key, ERASED_TTL_SECONDS)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise ApiError(409, "the class is being erased, retry", code="erase_contended")

    async def _drop_template(self, ck: ClassKeys, student: str) -> bool:
        """Remove the student from one model's gallery; True if they were in it."""
        for _ in range(_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(ck.gallery, ck.meta)
                    if not await pipe.hexists(ck.gallery, student):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return False
                    # HLEN, not EXISTS: redis-py's async cluster pipeline drops a watched EXISTS
                    has_meta = bool(await pipe.hlen(ck.meta))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hdel(ck.gallery, student)
                    pipe.delete(ck.packed)
                    if has_meta:  # a new stamp: nothing stamped before the erase is trusted
                        pipe.hset(ck.meta, "updated", f"{time.time():.6f}")
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise ApiError(409, "the class gallery is being changed, retry", code="erase_contended")

    async def _drop_results(self, key: str, student: str) -> int:
        """Delete one results hash if it names the student; 1 if deleted."""
        for _ in range(_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hgetall(key)
                    fields = {_text(k): _text(v) for k, v in raw.items()}
                    if not fields or not mentions(fields, student):
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
                        return 0
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    await pipe.execute()
                    return 1
                except WatchError:
                    continue
        raise ApiError(409, "stored results are being changed, retry", code="erase_contended")

    async def erase_class(self, tenant: str, class_name: str) -> Erasure:
        """Delete every model's gallery of the class (hash, meta, packed: one DEL per model).

        First the class-wide tombstone (``CLASS_WIDE``): an enrol job of the class submitted before
        this erase puts nothing after reading it, and withdraws what its put wrote, so no gallery
        comes back; the order (tombstone, then SCAN and DEL) is ``rollcall_job.recheck``'s. Written
        even when no gallery is found (404): a first enrolment of the class may be under way.
        Results stay (the route says so); identify jobs running meanwhile drop whoever their
        gallery re-read finds gone. Confirmed by the replicas as a student's erase is."""
        out = Erasure()
        try:
            await self._tombstone(tenant, class_name, CLASS_WIDE)
            galleries = await self._class(tenant, class_name)
            for ck in galleries.values():
                pipe = self.redis.pipeline(transaction=True)
                pipe.hlen(ck.gallery)
                pipe.delete(ck.gallery, ck.meta, ck.packed)
                students, _ = await pipe.execute()
                out.templates += int(students)
                out.models.append(ck.model_id)
            out.class_found = bool(out.models)
            expects = [Expect(keys.erased(tenant, class_name), CLASS_WIDE, present=True)]
            expects += [Expect(ck.gallery) for ck in galleries.values()]
            return await self.confirm(tenant, class_name, CLASS_WIDE, out, expects)
        except redisclient.ERRORS as exc:
            raise redis_unavailable(exc) from None
