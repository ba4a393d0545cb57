"""The container's termination message: the job's summary as JSON, never over Kubernetes' 4 KiB.

The operator copies it into the RecognitionJob's status (``{"summary": {...}}`` on success,
``{"error": "..."}`` on failure). Counts always fit; the per-photo lists that make a summary useful
to a person are cut down until the whole fits, and ``truncated`` says so.
"""

from __future__ import annotations

import json
from typing import Any

from rollcall_contract.jobenv import TERMINATION_MESSAGE_LIMIT


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _fits(doc: dict[str, Any], limit: int) -> bool:
    return len(_dump(doc).encode()) <= limit


def summary_message(
    summary: dict[str, Any], *, result_key: str | None, limit: int = TERMINATION_MESSAGE_LIMIT
) -> str:
    """``{"summary": ..., "resultKey": ...}`` within ``limit`` bytes, lists trimmed as needed."""
    doc: dict[str, Any] = {"summary": dict(summary)}
    if result_key is not None:
        doc["resultKey"] = result_key
    if _fits(doc, limit):
        return _dump(doc)
    body = doc["summary"]
    body["truncated"] = True
    lists = [k for k, v in body.items() if isinstance(v, list)]
    # Halve the longest list until it fits; a list at one item is dropped; then strings are clipped.
    while not _fits(doc, limit) and lists:
        k = max(lists, key=lambda name: len(_dump({name: body[name]})))
        if len(body[k]) > 1:
            body[k] = body[k][: len(body[k]) // 2]
        else:
            del body[k]
            lists.remove(k)
    for k, v in list(body.items()):
        if not _fits(doc, limit) and isinstance(v, str | dict):
            del body[k]
    return _dump(doc) if _fits(doc, limit) else _dump({"summary": {"truncated": True}})


def error_message(error: str, *, reason: str, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """``{"error": ..., "reason": ...}``, the error text clipped to fit."""
    doc = {"error": error, "reason": reason}
    while not _fits(doc, limit):
        doc["error"] = doc["error"][: max(0, len(doc["error"]) - 256 - (len(_dump(doc)) - limit))]
    return _dump(doc)
