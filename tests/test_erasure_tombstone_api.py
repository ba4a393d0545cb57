"""Erase tombstones, the API's side: an erase of one student (or of the whole class:
``CLASS_WIDE``) records it in the class's tombstone hash before it looks for templates, with a
TTL longer than any job runs, and prunes stale ones. Pure tables, and the real ``Eraser`` against
the suite's real Redis. The jobs' side is in ``test_erasure_tombstones.py``.
"""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import redis

from rollcall_api.erasure import (
    CLASS_WIDE,
    ERASED_TTL_SECONDS,
    Eraser,
    stale_tombstones,
)
from rollcall_contract import keys
from rollcall_contract.model import RunPolicy
from rollcall_job.gallery import GalleryMeta, GalleryStore
from rollcall_job.recheck import tombstone_ms
from test_erase_running_job import CLASS, TENANT, erase_class
from test_erase_running_job import erase as erase_student

pytestmark = pytest.mark.redis

ERASED = "dee"

DAY_MS = 86_400_000


@pytest.mark.parametrize(
    ("fields", "want"),
    [
        ({}, set()),
        ({"a": f"{10 * DAY_MS}-x"}, set()),  # written now
        ({"a": f"{10 * DAY_MS - ERASED_TTL_SECONDS * 1000}-x"}, set()),  # exactly the TTL old
        ({"a": f"{10 * DAY_MS - ERASED_TTL_SECONDS * 1000 - 1}-x"}, {"a"}),  # older: pruned
        ({"a": "garbage", "b": "-x", "c": f"{10 * DAY_MS}-y"}, {"a", "b"}),  # unreadable: pruned
    ],
)
def test_stale_tombstones(fields: dict[str, str], want: set[str]) -> None:
    assert stale_tombstones(fields, 10 * DAY_MS, ERASED_TTL_SECONDS) == want


def test_every_erase_writes_a_tombstone_of_its_own() -> None:
    values = {keys.tombstone(5) for _ in range(50)}
    assert len(values) == 50 and all(v.startswith("5-") for v in values)


def test_tombstones_outlive_the_longest_job() -> None:
    """A tombstone written after a job's first read must still be there at its last read."""
    bound = max(
        getattr(m, "le", 0) for m in RunPolicy.model_fields["active_deadline_seconds"].metadata
    )
    assert bound == 86_400 and bound + 3_600 <= ERASED_TTL_SECONDS


def test_the_tombstone_key_is_the_schools_and_no_gallerys() -> None:
    key = keys.erased("school-a", "6B")
    assert key == "rollcall:school-a:gallery:erased:{6B}"
    assert key.startswith(keys.tenant_prefix("school-a"))
    with pytest.raises(ValueError):
        keys.erased("school-a", "6B}:x")


def tombstoned_at_scan(monkeypatch: pytest.MonkeyPatch, field: str) -> list[bool]:
    """Whether the class's tombstone hash held ``field`` each time the erase looked for the
    class's galleries (``Eraser._class``, wrapped)."""
    seen: list[bool] = []
    scan = Eraser._class

    async def scanning(self: Eraser, tenant: str, class_name: str) -> Any:
        seen.append(bool(await self.redis.hexists(keys.erased(TENANT, CLASS), field)))
        return await scan(self, tenant, class_name)

    monkeypatch.setattr(Eraser, "_class", scanning)
    return seen


def test_an_erase_leaves_a_tombstone_first_even_where_it_finds_nothing(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = keys.erased(TENANT, CLASS)
    seen_at_scan = tombstoned_at_scan(monkeypatch, ERASED)
    now = keys.tombstone(int(time.time() * 1000))
    redis_client.hset(key, mapping={"old": "1-x", "bad": "x", "fresh": now})
    done = erase_student(redis_url, ERASED)
    assert (done.templates, done.results, done.class_found) == (0, 0, False)
    assert seen_at_scan == [True]  # written before the galleries were looked for
    first = redis_client.hget(key, ERASED)
    assert first is not None
    assert 0 < redis_client.ttl(key) <= ERASED_TTL_SECONDS
    # stale tombstones pruned, a recent one kept
    assert sorted(cast(list[bytes], redis_client.hkeys(key))) == [ERASED.encode(), b"fresh"]
    erase_student(redis_url, ERASED)
    assert redis_client.hget(key, ERASED) not in (None, first)  # each erase writes anew
    assert not redis_client.exists(keys.erased("school-b", CLASS))  # the tenant's own key


@pytest.mark.parametrize("enrolled", [True, False])
def test_a_class_erase_leaves_a_class_wide_tombstone_first(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, enrolled: bool
) -> None:
    """Written before the galleries are looked for, and also when none is found (404): an enrol
    job of the class may be writing its first gallery. A later class erase writes anew."""
    key = keys.erased(TENANT, CLASS)
    seen_at_scan = tombstoned_at_scan(monkeypatch, CLASS_WIDE)
    if enrolled:
        GalleryStore(redis_client, TENANT).put(
            CLASS, GalleryMeta("toy-v1", 3, "cosine"), {"a": [[1.0, 0.0, 0.0]]}
        )
    redis_client.hset(key, mapping={"old": "1-x"})
    before_ms = int(time.time() * 1000)
    done = erase_class(redis_url)
    assert (done.templates, done.class_found) == ((1, True) if enrolled else (0, False))
    assert seen_at_scan == [True]
    first = cast(bytes | None, redis_client.hget(key, CLASS_WIDE))
    assert first is not None
    stamp = tombstone_ms(first.decode())
    assert stamp is not None and before_ms <= stamp <= int(time.time() * 1000)
    assert 0 < redis_client.ttl(key) <= ERASED_TTL_SECONDS
    assert sorted(cast(list[bytes], redis_client.hkeys(key))) == [CLASS_WIDE.encode()]  # pruned
    erase_class(redis_url)
    assert redis_client.hget(key, CLASS_WIDE) not in (None, first)
