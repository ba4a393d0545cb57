"""kopf's peering rule as the runtime reads it (activity.py): who is the active replica."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
import pytest

from rollcall_operator.activity import Peering, is_active

NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)


def peer(priority: int, seen_ago: float = 0.0, lifetime: int = 20) -> dict[str, Any]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - dt.timedelta(seconds=seen_ago)).isoformat(),
    }


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, True),  # no peering status yet: nobody to yield to
        ({}, True),
        ({"me": peer(10)}, True),  # only itself
        ({"me": peer(1), "b": peer(5)}, True),  # a lower live peer
        ({"me": peer(10), "b": peer(20)}, False),  # a higher live peer
        ({"me": peer(10), "b": peer(10)}, False),  # equal: kopf pauses both
        ({"me": peer(10), "b": peer(20, seen_ago=30)}, True),  # a higher one, dead
        ({"me": peer(10), "b": peer(20, seen_ago=20)}, True),  # deadline reached is dead
        ({"me": peer(10), "b": peer(20, seen_ago=19)}, False),  # a second left
        ({"me": peer(10), "b": peer(20, seen_ago=30, lifetime=60)}, False),  # its own lifetime
        ({"me": peer(10), "b": {"priority": 20}}, False),  # no lastseen: kopf reads it as now
        ({"me": peer(10), "b": None}, True),  # a removed entry
        ({"me": peer(10), "b": {"priority": 20, "lastseen": "2026-12-02T11:59:59"}}, False),
    ],
)
def test_active_unless_a_live_peer_has_a_higher_or_equal_priority(
    status: dict[str, Any] | None, expected: bool
) -> None:
    assert is_active(status, "me", 10, NOW) is expected


@pytest.mark.parametrize(
    ("peering", "namespaces", "expected"),
    [
        ({"standalone": True, "name": "x"}, [], None),
        ({"standalone": False, "name": ""}, [], None),
        ({"standalone": False, "name": "p", "clusterwide": True}, ["a"], ()),
        ({"standalone": False, "name": "p", "clusterwide": False}, ["a", "b"], ("a", "b")),
    ],
)
def test_peering_objects_follow_kopfs_mode(
    peering: dict[str, Any],
    namespaces: list[str],
    expected: tuple[str, ...] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_ID", "pod-1")
    settings = kopf.OperatorSettings()
    for key, value in {"priority": 7, "lifetime": 30, **peering}.items():
        setattr(settings.peering, key, value)
    got = Peering.of(settings, namespaces)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got.namespaces, got.priority, got.poll_seconds) == (expected, 7, 10.0)
