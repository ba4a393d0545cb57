"""Why the apiserver refused to create an RJ's Job, in words for the RJ's status (pure).

A ResourceQuota (``count/jobs.batch``, ``requests.nvidia.com/gpu`` ...) or a LimitRange in the
school's namespace answers 403 Forbidden to the operator's create. That is the school's own limit,
not an operator fault: the RJ stays Queued with reason ``QuotaExceeded`` and the apiserver's message,
and the create is retried with a growing delay (the quota may be raised, or other Jobs may finish).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

QUOTA_EXCEEDED = "QuotaExceeded"
CREATE_FORBIDDEN = "CreateForbidden"
_LIMIT_WORDS = ("exceeded quota", "quota", "limitrange", "maximum", "minimum", "must specify")


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def classify(status: int | None, body: str | bytes | None) -> Refusal | None:
    """A Refusal for a 403 on Job create; None for anything else (a plain error to retry)."""
    if status != 403:
        return None
    message = ""
    if body:
        try:
            doc = json.loads(body)
            message = str(doc.get("message") or "") if isinstance(doc, dict) else ""
        except ValueError:
            message = body.decode(errors="replace") if isinstance(body, bytes) else body
    message = message.strip()[:900] or "the apiserver refused to create the Job (403)"
    lower = message.lower()
    if any(word in lower for word in _LIMIT_WORDS):
        return Refusal(QUOTA_EXCEEDED, message)
    return Refusal(CREATE_FORBIDDEN, message)
