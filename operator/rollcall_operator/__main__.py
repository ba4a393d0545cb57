"""``rollcall-operator``: run the kopf operator with the settings from the environment.

Standalone (no peering objects needed) unless ``ROLLCALL_OPERATOR_PEERING_NAME`` is set, which is
required with more than one replica: kopf then elects one active replica through that peering
object (the chart installs kopf's peering CRDs).
"""

from __future__ import annotations

import os
import secrets

import kopf

from rollcall_contract import logs
from rollcall_operator.activity import own_identity
from rollcall_operator.settings import get_settings


def peering_priority(configured: int | None) -> int:
    """The configured priority, or a random one: kopf pauses every peer of equal priority, so
    replicas started from one Deployment template must not share one."""
    return configured if configured is not None else 1 + secrets.randbelow(2**31 - 1)


def main() -> None:
    settings = get_settings()
    if settings.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(settings.kubeconfig)  # kopf's own login reads it
    # the same JSON lines as the API and the job; kopf's own loggers propagate to this handler
    logs.configure(os.environ.get("ROLLCALL_OPERATOR_LOG_LEVEL", "INFO"))
    import rollcall_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=settings.peering_name is None,
        peering_name=settings.peering_name,
        priority=peering_priority(settings.priority),
        identity=own_identity(),  # type: ignore[arg-type]  # kopf types it as a NewType of str
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )


if __name__ == "__main__":
    main()
