"""What the operator reads from its Jobs' pods directly (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def schedule_verdict(pod: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """The scheduler's (reason, message) while it cannot place ``pod``; None once it can.

    Read from the pod's PodScheduled=False condition (reason Unschedulable, or another the
    scheduler sets, e.g. SchedulingGated); a pod being deleted or already bound has none.
    """
    if pod["metadata"].get("deletionTimestamp") or (pod.get("spec") or {}).get("nodeName"):
        return None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("reason") or "Unschedulable", cond.get("message")
    return None
