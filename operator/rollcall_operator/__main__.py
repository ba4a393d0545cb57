"""``rollcall-operator``: run the kopf operator with the settings from the environment.

Standalone (no peering objects needed) unless ``ROLLCALL_OPERATOR_PEERING_NAME`` is set, which is
required with more than one replica: kopf then elects one active replica through that peering
object (the chart installs kopf's peering CRDs).
"""

from __future__ import annotations

import logging
import os

import kopf

from rollcall_operator.settings import get_settings


def main() -> None:
    settings = get_settings()
    if settings.kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(settings.kubeconfig)  # kopf's own login reads it
    logging.basicConfig(
        level=os.environ.get("ROLLCALL_OPERATOR_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    import rollcall_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=False)
    kopf.run(
        standalone=settings.peering_name is None,
        peering_name=settings.peering_name,
        priority=settings.priority,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )


if __name__ == "__main__":
    main()
