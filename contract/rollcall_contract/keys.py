"""The Redis key layout: the one place every component (job, operator, API) takes key names from.

Every tenant-owned key starts with ``rollcall:<tenant>:`` where the tenant is the Kubernetes
namespace of the school. A tenant is a DNS label (no ``:``, no glob metacharacter), so one school's
prefix is never a prefix of another's and the ACL pattern ``rollcall:<tenant>:*`` (``tenant_pattern``)
covers exactly that school's keys. Names inside a key are checked to be plain tokens, so no argument
can move a key outside its tenant or out of its hash tag.

Keys that must change together share a Redis Cluster hash tag (the part in braces), so a MULTI/EXEC
or a RENAME across them stays on one shard.
"""

from __future__ import annotations

import re
import secrets

PREFIX = "rollcall"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Gallery names, model ids, job uids and attempts: letters, digits and . _ - (what the RJ model's
# Ident, model cards' ids and Kubernetes uids allow). None of these is special in a key or a glob.
_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,253}")
# Idempotency-Key header values: 1-255 visible ASCII characters.
_VISIBLE = re.compile(r"[\x21-\x7e]{1,255}")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _check(kind: str, value: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {kind} for a Redis key: {value!r}")
    return value


def check_tenant(tenant: str) -> str:
    """``tenant`` itself if it is a DNS label (a Kubernetes namespace name); ValueError otherwise."""
    return _check("tenant", tenant, _DNS_LABEL)


def glob_escape(text: str) -> str:
    """``text`` with Redis glob metacharacters escaped, so it matches only itself in MATCH/ACL."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def tenant_prefix(tenant: str) -> str:
    """``rollcall:<tenant>:`` — what every key of that school starts with."""
    return f"{PREFIX}:{check_tenant(tenant)}:"


def tenant_pattern(tenant: str) -> str:
    """``rollcall:<tenant>:*`` — the ACL key pattern (and SCAN MATCH) of that school's keys."""
    return f"{tenant_prefix(tenant)}*"


def _gallery_in(prefix: str, name: str, model_id: str) -> str:
    name, model_id = _check("gallery name", name, _TOKEN), _check("model id", model_id, _TOKEN)
    return f"{prefix}gallery:{{{name}:{model_id}}}"


def _gallery_match_in(prefix: str, name: str) -> str:
    return f"{glob_escape(prefix)}gallery:{{{glob_escape(_check('gallery name', name, _TOKEN))}:*}}"


def _gallery_base(tenant: str, name: str, model_id: str) -> str:
    return _gallery_in(tenant_prefix(tenant), name, model_id)


def gallery(tenant: str, name: str, model_id: str) -> str:
    """Hash: student id -> raw little-endian float32 embeddings (k x dim) of that student.

    Embeddings of different models are not comparable, so the model id is part of the key.
    """
    return _gallery_base(tenant, name, model_id)


def gallery_wait(tenant: str, name: str, model_id: str) -> str:
    """String, 60 s: a job's fresh write in a gallery's slot, so that a WAIT on the same connection
    confirms every earlier write to that primary (``redisclient.confirm_on``). Outside
    ``gallery:``, so no gallery SCAN (nor the API's ACL pattern) meets it."""
    gallery_key = gallery(tenant, name, model_id)
    return f"{tenant_prefix(tenant)}gallery-wait:{gallery_key[gallery_key.index('{') :]}"


def gallery_meta(tenant: str, name: str, model_id: str) -> str:
    """Hash: model_id, dim, dtype, metric, updated — read with the gallery in one round trip."""
    return f"{_gallery_base(tenant, name, model_id)}:meta"


def gallery_packed(tenant: str, name: str, model_id: str) -> str:
    """String: every row of ``gallery`` in one value (ids + raw float32), rewritten with it in one
    MULTI/EXEC, so a class loads as one reply; stamped with meta's ``updated`` to detect drift."""
    return f"{_gallery_base(tenant, name, model_id)}:packed"


def gallery_match(tenant: str, name: str) -> str:
    """SCAN MATCH pattern for the gallery hash of every model of one class (not meta/packed)."""
    return _gallery_match_in(tenant_prefix(tenant), name)


# How long the class's tombstone hash lives after the last erase, and how old one tombstone may
# grow before a later erase prunes it. A job counts a tombstone stamped after its RJ's submission
# or written while it ran (``rollcall_job.recheck``), so each must outlive the job's last read:
# jobs run at most ``RunPolicy.active_deadline_seconds`` (the model's bound, 86,400 s: the Job's
# wall-clock limit, retries included). One more hour covers the Job controller's lag in enforcing
# it and the clock difference of the API replica that prunes and the one that wrote (each stamp is
# the writer's clock). A job whose pod starts this long or longer after its RJ's submission could
# miss an erase made meanwhile, so it refuses to run (resubmit it). Beyond that an erased student's
# id is kept no longer than needed.
ERASED_TTL_SECONDS = 86_400 + 3_600
# The latest a job's pod may start after its RJ's submission and still see every erase since.
ERASED_START_WITHIN_SECONDS = ERASED_TTL_SECONDS - 3_600
# The tombstone field of a whole-class erase: no student id can be it (``model.IDENT`` has no *).
ERASED_CLASS_WIDE = "*"


def tombstone(now_ms: int) -> str:
    """A tombstone's value: the erase time (ms) and a nonce, so that every erase writes a value
    no earlier read can hold (a job tells an erase made since its start by a changed value)."""
    return f"{now_ms}-{secrets.token_hex(4)}"


def tombstone_ms(value: str) -> int | None:
    """The erase time (unix ms) of a tombstone value ``<ms>-<nonce>``; None when it is not one."""
    head, sep, nonce = value.partition("-")
    if not (sep and nonce and head.isascii() and head.isdigit()):
        return None
    return int(head)


def erased(tenant: str, name: str) -> str:
    """Hash: student id -> erase tombstone (``<unix ms>-<nonce>``) of the class gallery ``name``.

    Written by the API's erase of one student before it touches any template, read by the jobs of
    the class after they publish (``rollcall_job.recheck``): a student erased while a job ran is
    left out of its results and its enrolment even when the erase found no template to remove.
    Short-lived (a TTL longer than any job runs). Its own hash slot (no gallery's or job's key
    changes with it in one transaction); under ``gallery:`` so the ACL pattern that lets the API
    erase galleries covers it, and outside ``gallery:{<name>:`` so no gallery SCAN matches it.
    """
    return f"{tenant_prefix(tenant)}gallery:erased:{{{_check('gallery name', name, _TOKEN)}}}"


def erased_unconfirmed(tenant: str, name: str) -> str:
    """Hash: student id (or ``ERASED_CLASS_WIDE``) -> JSON counts of an erase applied on the
    primary and not yet confirmed by its replicas (``rollcall_api.erasure``). Beside the
    tombstone, in its slot and under the API's ``gallery:`` pattern; no gallery SCAN matches it."""
    return erased(tenant, name) + ":unconfirmed"


def erase_wait(tenant: str, tag: str) -> str:
    """String, 60 s: an erase's fresh write on a Cluster primary other than its marker's, for WAIT
    to count there; ``{<tag>}`` picks its slot, hence its primary. Under the API's ``gallery:``
    pattern, outside every gallery's name (``gallery:{``) and tombstone's (``gallery:erased:``)."""
    return f"{tenant_prefix(tenant)}gallery:erase-wait:{{{_check('wait tag', tag, _TOKEN)}}}"


def _job_base(tenant: str, job_uid: str) -> str:
    return f"{tenant_prefix(tenant)}job:{{{_check('job uid', job_uid, _TOKEN)}}}"


def job_results(tenant: str, job_uid: str) -> str:
    """Hash: summary, attendance, photos (JSON fields) — renamed into place whole, never partial."""
    return f"{_job_base(tenant, job_uid)}:results"


def job_results_staging(tenant: str, job_uid: str, attempt: str) -> str:
    """Where a run builds its results before the atomic RENAME onto ``job_results``."""
    attempt = _check("attempt", attempt, _TOKEN)
    return f"{_job_base(tenant, job_uid)}:results:staging:{attempt}"


def job_results_wait(tenant: str, job_uid: str) -> str:
    """String, 60 s: a job's fresh write in its results' slot, for ``redisclient.confirm_on``
    after the publish. Not matched by the results SCAN (``job:*:results``)."""
    return f"{_job_base(tenant, job_uid)}:results-wait"


def job_progress(tenant: str, job_uid: str) -> str:
    """Hash: done, total, updated (unix seconds) — written at a bounded rate by the job."""
    return f"{_job_base(tenant, job_uid)}:progress"


def idempotency(tenant: str, key: str) -> str:
    """String: the RJ name a POST with this Idempotency-Key created (SET NX with a TTL)."""
    return f"{tenant_prefix(tenant)}idem:{_check('idempotency key', key, _VISIBLE)}"


# The layout before tenants (galleries only: results, progress and idempotency keys expire by TTL).
# Read only by the migration (``rollcall_job.migrate``); nothing writes it any more.
def legacy_gallery(name: str, model_id: str) -> str:
    """``rollcall:gallery:{<name>:<model_id>}`` — a gallery written before keys carried a tenant."""
    return _gallery_in(f"{PREFIX}:", name, model_id)


def legacy_gallery_match(name: str) -> str:
    """SCAN MATCH pattern for the legacy gallery hash of every model of one class."""
    return _gallery_match_in(f"{PREFIX}:", name)
