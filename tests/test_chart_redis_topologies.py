"""The chart takes a Redis Cluster or Sentinel URL for an external Redis (the schema admits exactly
the schemes ``rollcall_contract.redisclient`` parses), and opens the extra ports (sentinels, other
cluster nodes) in the job pods' and the operator's egress policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from helmchart import helm, one, render, values_args
from rollcall_contract import redisclient

FULL = "rc-rollcall"
CHART = Path(__file__).resolve().parent.parent / "charts" / "rollcall"

URLS = [
    "redis://:pw@redis:6379/0",
    "rediss+cluster://rollcall-api:pw@c-0.redis:6379,c-1.redis:6379",
    "redis+cluster://c-0:7000",
    "redis+sentinel://rollcall-api:pw@s-0:26379,s-1:26379/mymaster/0",
    "rediss+sentinel://s-0/mymaster?sentinel_password=x",
]


@pytest.mark.parametrize("url", URLS)
def test_external_url_of_every_topology_is_accepted(
    tools_bin: Path, tmp_path: Path, url: str
) -> None:
    redisclient.parse(url)  # the components accept it too
    values = {"redis": {"enabled": False, "external": {"url": url}}}
    docs = render(tools_bin, tmp_path, values)
    assert one(docs, "Secret", f"{FULL}-redis-url")["stringData"]["url"] == url


@pytest.mark.parametrize("url", ["redis+shard://a:1", "http://redis:6379", "cluster://a:1"])
def test_other_schemes_are_refused_by_the_schema(tools_bin: Path, tmp_path: Path, url: str) -> None:
    with pytest.raises(ValueError):
        redisclient.parse(url)
    values = {"redis": {"enabled": False, "external": {"url": url}}}
    args = ["template", "rc", str(CHART), *values_args(tmp_path, values)]
    result = helm(tools_bin, *args, check=False)
    assert result.returncode != 0 and "schema" in result.stderr


def test_extra_ports_reach_the_sentinels(tools_bin: Path, tmp_path: Path) -> None:
    url = "redis+sentinel://s-0:26379,s-1:26379/mymaster"
    values = {
        "redis": {"enabled": False, "external": {"url": url, "port": 6379, "extraPorts": [26379]}}
    }
    docs = render(tools_bin, tmp_path, values)
    want = [{"protocol": "TCP", "port": 6379}, {"protocol": "TCP", "port": 26379}]
    for policy in (f"{FULL}-job", f"{FULL}-operator"):
        egress = one(docs, "NetworkPolicy", policy)["spec"]["egress"]
        assert any(rule.get("ports") == want for rule in egress), (policy, egress)
