"""The chart's side of operator safety, rendered with the real helm: the operator's egress
NetworkPolicy, callback allowlists and caps flowing into the operator's real settings."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from helmchart import find, render
from rollcall_operator.egress import EgressDenied, vet_url
from rollcall_operator.quantities import JobBounds
from test_chart_render import FULL, operator_settings


def operator_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (policy,) = find(docs, "NetworkPolicy", f"{FULL}-operator")
    spec: dict[str, Any] = policy["spec"]
    return spec


def webhook_rule(spec: dict[str, Any]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        r for r in spec["egress"] if any("ipBlock" in p for p in r.get("to", []))
    ]
    assert len(rules) == 1
    return rules[0]


def test_operator_egress_reaches_only_public_webhook_addresses_by_default(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(tools_bin, tmp_path)
    spec = operator_policy(docs)
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    rule = webhook_rule(spec)
    v4 = next(p["ipBlock"] for p in rule["to"] if p["ipBlock"]["cidr"] == "0.0.0.0/0")
    excepted = [ipaddress.ip_network(c) for c in v4["except"]]
    for private in ("10.1.2.3", "172.20.0.1", "192.168.0.9", "127.0.0.1", "169.254.169.254",
                    "100.64.1.1"):  # fmt: skip
        assert any(ipaddress.ip_address(private) in net for net in excepted), private
    assert [p["port"] for p in rule["ports"]] == [443]
    settings = operator_settings(docs, monkeypatch)
    allow = settings.egress_allowlist()
    assert not allow.allow_http and not allow.networks and not allow.hosts
    with pytest.raises(EgressDenied):
        vet_url("https://169.254.169.254/", allow)
    # the chart's default caps: GPUs per school and per job, cpu/memory bounds
    assert (settings.max_gpus_per_namespace, settings.max_running_per_namespace) == (2, 4)
    assert settings.job_bounds() == JobBounds(2, "8", "32Gi")
    assert settings.webhook_secret_name == f"{FULL}-webhook" and not settings.trust_kueue


def test_allowlisted_receivers_open_both_fences(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hooks"}}}
    docs = render(tools_bin, tmp_path, {"webhook": {
        "allowCidrs": ["10.20.0.0/16"], "allowHosts": ["*.hooks.svc"], "allowHttp": True,
        "egressTo": [peer]}})  # fmt: skip
    rule = webhook_rule(operator_policy(docs))
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in rule["to"] and peer in rule["to"]
    assert sorted(p["port"] for p in rule["ports"]) == [80, 443]
    allow = operator_settings(docs, monkeypatch).egress_allowlist()
    assert vet_url("http://10.20.1.2/hook", allow)
    assert vet_url("https://receiver.hooks.svc/hook", allow)
    with pytest.raises(EgressDenied):
        vet_url("https://10.21.1.2/hook", allow)
