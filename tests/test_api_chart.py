"""The chart's API parts: limits and opt-in endpoints reach the API settings, the PDB, the metrics
port (and its NetworkPolicy rule), and the Role that lets the API record erasures as Events."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from helmchart import env_of, find, one, render
from rollcall_api.settings import Settings

FULL = "rc-rollcall"


def api_settings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    container = one(docs, "Deployment", f"{FULL}-api")["spec"]["template"]["spec"]["containers"][0]
    for name in list(os.environ):
        if name.startswith("ROLLCALL_API_"):
            monkeypatch.delenv(name)
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "redis://from-secret:6379/0")
    return Settings()


def test_defaults_keep_docs_and_metrics_off_and_limits_on(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(tools_bin, tmp_path)
    settings = api_settings(docs, monkeypatch)
    assert not settings.docs_enabled and settings.metrics_port == 0
    assert settings.submissions_per_minute == 60 and settings.submissions_burst == 20
    assert settings.streams_per_key == 10 and settings.watch_linger_seconds == 5
    pdb = one(docs, "PodDisruptionBudget", f"{FULL}-api")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    deployment = one(docs, "Deployment", f"{FULL}-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    policy = one(docs, "NetworkPolicy", f"{FULL}-api")
    assert len(policy["spec"]["ingress"]) == 1  # the API port only


def test_values_reach_the_settings_and_open_only_what_they_name(
    tools_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scraper = [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    values = {
        "api": {
            "docs": True,
            "metricsPort": 9100,
            "limits": {"submissionsPerMinute": 6, "submissionsBurst": 2, "streamsPerKey": 0},
            "pdb": {"minAvailable": 1},
        },
        "networkPolicy": {"metricsFrom": scraper},
    }
    docs = render(tools_bin, tmp_path, values)
    settings = api_settings(docs, monkeypatch)
    assert settings.docs_enabled and settings.metrics_port == 9100
    assert (settings.submissions_per_minute, settings.submissions_burst) == (6, 2)
    assert settings.streams_per_key == 0
    pdb = one(docs, "PodDisruptionBudget", f"{FULL}-api")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    container = one(docs, "Deployment", f"{FULL}-api")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]
    rules = one(docs, "NetworkPolicy", f"{FULL}-api")["spec"]["ingress"]
    assert {"ports": [{"protocol": "TCP", "port": 9100}], "from": scraper} in rules

    docs = render(tools_bin, tmp_path, {"api": {"pdb": {"enabled": False}}})
    assert find(docs, "PodDisruptionBudget") == []


def api_role_rules(tools_bin: Path, tmp_path: Path, namespace: str) -> list[dict[str, Any]]:
    """The rules the chart grants the API in one school namespace."""
    docs = render(tools_bin, tmp_path, {"namespaces": [namespace]})
    rules: list[dict[str, Any]] = one(docs, "Role", f"{FULL}-api", namespace)["rules"]
    return rules


def test_the_api_may_create_events_and_nothing_else_about_them(
    tools_bin: Path, tmp_path: Path
) -> None:
    rules = api_role_rules(tools_bin, tmp_path, "school-a")
    events = [r for r in rules if "events" in r["resources"]]
    assert events == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
