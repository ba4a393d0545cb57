"""The Redis key layout: the one place every component (job, operator, API) takes key names from.

Everything lives under the ``rollcall:`` prefix. Keys that must change together share a Redis Cluster
hash tag (the part in braces), so a MULTI/EXEC or a RENAME across them stays on one shard.
"""

from __future__ import annotations

PREFIX = "rollcall"


def gallery(name: str, model_id: str) -> str:
    """Hash: student id -> raw little-endian float32 embeddings (k x dim) of that student.

    Embeddings of different models are not comparable, so the model id is part of the key.
    """
    return f"{PREFIX}:gallery:{{{name}:{model_id}}}"


def gallery_meta(name: str, model_id: str) -> str:
    """Hash: model_id, dim, dtype, metric, updated — read with the gallery in one round trip."""
    return f"{PREFIX}:gallery:{{{name}:{model_id}}}:meta"


def gallery_packed(name: str, model_id: str) -> str:
    """String: every row of ``gallery`` in one value (ids + raw float32), rewritten with it in one
    MULTI/EXEC, so a class loads as one reply; stamped with meta's ``updated`` to detect drift."""
    return f"{PREFIX}:gallery:{{{name}:{model_id}}}:packed"


def job_results(job_uid: str) -> str:
    """Hash: summary, attendance, photos (JSON fields) — renamed into place whole, never partial."""
    return f"{PREFIX}:job:{{{job_uid}}}:results"


def job_results_staging(job_uid: str, attempt: str) -> str:
    """Where a run builds its results before the atomic RENAME onto ``job_results``."""
    return f"{PREFIX}:job:{{{job_uid}}}:results:staging:{attempt}"


def job_progress(job_uid: str) -> str:
    """Hash: done, total, updated (unix seconds) — written at a bounded rate by the job."""
    return f"{PREFIX}:job:{{{job_uid}}}:progress"


def idempotency(namespace: str, key: str) -> str:
    """String: the RJ name a POST with this Idempotency-Key created (SET NX with a TTL)."""
    return f"{PREFIX}:idem:{{{namespace}}}:{key}"
