"""The results codec: how a job's documents are laid out as fields of one Redis hash.

The job writes with ``encode_results`` (``rollcall_job.results`` stages and renames the hash into
place atomically); the API reads with ``decode_results``. Pure, so both sides share one codec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

FIELDS = ("summary", "attendance", "photos")
# Redis caps a bulk string at 512 MB; stay far below it and keep each write short so a big result
# does not block the server: a large document is split over several fields and joined on read.
CHUNK_BYTES = 1 << 20
PARTS = "parts"


class IncompleteResults(ValueError):
    """The stored hash lacks parts it says it has (should be impossible: it was renamed whole)."""


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def encode_results(
    documents: Mapping[str, Any], *, chunk_bytes: int = CHUNK_BYTES
) -> list[tuple[str, str]]:
    """Hash fields for ``documents`` (name -> JSON-able), in write order, ``parts`` last.

    A big document is split over ``name``, ``name:1``, ``name:2``... and ``parts`` records how
    many, so no single command is huge and a reader can tell a whole result from a partial one.
    """
    if PARTS in documents or any(":" in name for name in documents):
        raise ValueError("document names must not be 'parts' or contain ':'")
    fields: list[tuple[str, str]] = []
    parts: dict[str, int] = {}
    for name, doc in documents.items():
        pieces = _chunks(json.dumps(doc, separators=(",", ":")), chunk_bytes)
        parts[name] = len(pieces)
        fields += [(name if i == 0 else f"{name}:{i}", piece) for i, piece in enumerate(pieces)]
    fields.append((PARTS, json.dumps(parts)))
    return fields


def decode_results(fields: Mapping[str, str]) -> dict[str, Any]:
    """Join and decode a results hash as ``encode_results`` laid it out."""
    if PARTS not in fields:
        raise IncompleteResults("results without a parts record")
    out: dict[str, Any] = {}
    try:
        for name, n in json.loads(fields[PARTS]).items():
            text = "".join(fields[name if i == 0 else f"{name}:{i}"] for i in range(int(n)))
            out[str(name)] = json.loads(text)
    except KeyError as e:
        raise IncompleteResults(f"missing part {e}") from e
    except (ValueError, TypeError, AttributeError) as e:
        raise IncompleteResults(f"undecodable results: {type(e).__name__}") from e
    return out
