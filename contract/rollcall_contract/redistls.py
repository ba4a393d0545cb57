"""TLS to Redis: ``rediss://`` URLs verified against a CA file, the same way in every component.

The job, the operator and the API each have a ``redis_ca_file`` setting; ``client_options`` turns
it into redis-py keyword arguments. A CA file with a plain ``redis://`` URL is refused rather than
silently ignored: whoever set a CA meant the traffic to be encrypted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Where the chart and the operator mount the CA certificate (a ConfigMap: it is not a secret).
CA_MOUNT = Path("/etc/rollcall/redis-ca")
CA_KEY = "ca.crt"


def client_options(url: str, ca_file: Path | str | None) -> dict[str, Any]:
    """redis-py ``from_url`` keyword arguments for ``url`` with ``ca_file`` (none without it).

    The server certificate must chain to that CA and name the host (redis-py checks both for
    ``ssl_cert_reqs="required"`` with ``ssl_check_hostname``).
    """
    if ca_file is None or str(ca_file) == "":
        return {}
    if urlsplit(url).scheme != "rediss":
        raise ValueError("a Redis CA file is set but the Redis URL is not rediss://")
    return {"ssl_ca_certs": str(ca_file), "ssl_cert_reqs": "required", "ssl_check_hostname": True}
