"""Move galleries written before keys carried a tenant under one school's namespace.

``rollcall:gallery:{<name>:<model>}`` (+ ``:meta``, ``:packed``) does not say which school it
belongs to, so a person who knows must say it: ``--tenant`` is the school's namespace. Each model's
three keys move in one MULTI/EXEC of RENAMEs, WATCHed, after checking that the school has no gallery
of that name and model yet (an existing tenant gallery is never overwritten: the move is refused).
Old and new keys share their hash tag ``{<name>:<model>}``, so the RENAMEs stay on one Redis Cluster
shard. Results, progress and idempotency keys need no migration: they expire by their TTL.

Run it with a Redis user that may touch both layouts (the chart's ``rollcall-admin``)::

    python -m rollcall_job.migrate --tenant school-north --gallery grade7-b --all-models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from rollcall_contract import keys


@dataclass(frozen=True)
class Move:
    """One model's gallery: (source, destination) key pairs, hash first."""

    model_id: str
    pairs: tuple[tuple[str, str], ...]


@dataclass
class Report:
    moved: list[str] = field(default_factory=list)  # model ids
    refused: list[str] = field(default_factory=list)  # the tenant already has that gallery
    missing: list[str] = field(default_factory=list)  # no legacy gallery of that model


def plan(tenant: str, name: str, model_ids: Iterable[str]) -> list[Move]:
    """Which old key goes to which new key, per model (pure; names are validated by ``keys``)."""
    moves = []
    for model_id in sorted(set(model_ids)):
        pairs = (
            (keys.legacy_gallery(name, model_id), keys.gallery(tenant, name, model_id)),
            (
                keys.legacy_gallery(name, model_id) + ":meta",
                keys.gallery_meta(tenant, name, model_id),
            ),
            (
                keys.legacy_gallery(name, model_id) + ":packed",
                keys.gallery_packed(tenant, name, model_id),
            ),
        )
        moves.append(Move(model_id, pairs))
    return moves


def model_id_of(legacy_key: str, name: str) -> str:
    """``rollcall:gallery:{<name>:<model>}`` -> ``<model>``."""
    head = keys.legacy_gallery(name, "x")[: -len("x}")]
    if not (legacy_key.startswith(head) and legacy_key.endswith("}")):
        raise ValueError(f"not a legacy gallery key of {name!r}: {legacy_key!r}")
    return legacy_key[len(head) : -1]


def legacy_models(client: redis.Redis, name: str) -> list[str]:
    """Model ids of every legacy gallery of class ``name`` (SCAN, never KEYS)."""
    found = client.scan_iter(match=keys.legacy_gallery_match(name), count=1000, _type="hash")
    return sorted(model_id_of(cast(bytes, k).decode(), name) for k in found)


def _move_one(client: redis.Redis, move: Move) -> str:
    """'moved', 'refused' or 'missing'; atomic: all of a model's keys move, or none."""
    sources = [src for src, _ in move.pairs]
    targets = [dst for _, dst in move.pairs]

    def txn(pipe: Any) -> str:
        if not pipe.exists(sources[0]):
            return "missing"
        if pipe.exists(*targets):
            return "refused"
        present = [(s, d) for s, d in move.pairs if pipe.exists(s)]
        pipe.multi()
        for src, dst in present:
            pipe.rename(src, dst)
        return "moved"

    outcome: list[str] = []

    def run(pipe: Any) -> None:  # redis-py may call it again after a WATCH conflict
        outcome[:] = [txn(pipe)]

    client.transaction(run, *sources, *targets)
    return outcome[0]


def migrate(client: redis.Redis, tenant: str, name: str, model_ids: Sequence[str]) -> Report:
    report = Report()
    for move in plan(tenant, name, model_ids):
        getattr(report, _move_one(client, move)).append(move.model_id)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every named gallery moved, 1 when none was found, 2 when one was refused."""
    ap = argparse.ArgumentParser(
        prog="python -m rollcall_job.migrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--tenant", required=True, help="the school's namespace the class belongs to")
    ap.add_argument("--gallery", required=True, help="gallery name (the class code by default)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-id", action="append", help="embedder card id (repeatable)")
    which.add_argument("--all-models", action="store_true", help="every model's gallery")
    ap.add_argument(
        "--url",
        default=os.environ.get("ROLLCALL_REDIS_URL", ""),
        help="Redis URL of a user allowed both layouts (default: $ROLLCALL_REDIS_URL)",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = ap.parse_args(argv)
    if not args.url:
        ap.error("--url or ROLLCALL_REDIS_URL is required")
    try:
        keys.gallery_match(args.tenant, args.gallery)
    except ValueError as e:
        ap.error(str(e))
    client = redis.Redis.from_url(args.url)
    try:
        models = legacy_models(client, args.gallery) if args.all_models else args.model_id
        if args.dry_run:
            moves = plan(args.tenant, args.gallery, models)
            print(json.dumps([dataclasses.asdict(m) for m in moves], indent=2))
            return 0 if moves else 1
        report = migrate(client, args.tenant, args.gallery, models)
    finally:
        client.close()
    print(json.dumps(dataclasses.asdict(report), indent=2))
    if report.refused:
        return 2
    return 0 if report.moved and not report.missing else 1


if __name__ == "__main__":
    sys.exit(main())
