"""Is this replica the active one? kopf's peering rule, read from the same peering objects.

kopf pauses a stand-by replica's event handlers, but not what the startup handler starts: the
seeded queue, the admission, progress and Kueue loops would write from a stand-by with a stale
cache. The runtime runs those only while ``is_active`` holds, by kopf's own rule: this replica is
active iff no live peer (``lastseen + lifetime`` not passed) other than itself has a higher or equal
priority. Standalone (no peering name) is always active.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import kopf


@cache
def own_identity() -> str:
    """This process's peering identity, handed to ``kopf.run`` too: the chart's POD_ID, else
    one drawn once per process (as kopf draws its own)."""
    pod = os.environ.get("POD_ID")
    if pod is not None:
        return pod
    return f"{getpass.getuser()}@{socket.gethostname()}/{secrets.token_hex(3)}"


def _time(text: str | None, now: dt.datetime) -> dt.datetime:
    if not text:
        return now  # kopf reads a peer without lastseen as seen now
    seen = dt.datetime.fromisoformat(text)
    return seen if seen.tzinfo is not None else seen.replace(tzinfo=dt.UTC)


def is_active(status: Mapping[str, Any] | None, me: str, priority: int, now: dt.datetime) -> bool:
    """kopf's rule on one peering object's status ({identity: {priority, lifetime, lastseen}})."""
    for peer, info in (status or {}).items():
        if peer == me or not isinstance(info, Mapping):
            continue
        deadline = _time(info.get("lastseen"), now) + dt.timedelta(
            seconds=int(info.get("lifetime", 60))
        )
        if deadline > now and int(info.get("priority", 0)) >= priority:
            return False
    return True


@dataclass(frozen=True)
class Peering:
    """Where kopf keeps this replica's peering, and who it is there; None when standalone."""

    name: str
    identity: str
    priority: int
    lifetime: float
    namespaces: tuple[str, ...]  # empty: the cluster-wide ClusterKopfPeering

    @classmethod
    def of(cls, settings: kopf.OperatorSettings, namespaces: list[str]) -> Peering | None:
        peering = settings.peering
        if peering.standalone or not peering.name:
            return None
        scopes = () if peering.clusterwide else tuple(namespaces)
        return cls(peering.name, own_identity(), peering.priority, peering.lifetime, scopes)

    @property
    def poll_seconds(self) -> float:
        """A third of a lifetime: a change is seen well before a dead peer's record expires."""
        return max(1.0, self.lifetime / 3)
