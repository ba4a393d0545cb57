"""Render and install charts/rollcall with the real helm binary; shared by the chart tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "rollcall"


def helm(
    tools_bin: Path,
    *args: str,
    kubeconfig: Path | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run helm with an isolated home (no user repositories or plugins leak in)."""
    home = Path(os.environ.get("TMPDIR", "/tmp")) / "rollcall-helm-home"
    env = {
        "PATH": f"{tools_bin}:{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(tools_bin / "helm"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def values_args(tmp: Path, values: Mapping[str, Any] | None) -> list[str]:
    """``--values FILE`` for ``values`` (a file, so nested maps and lists need no --set escaping)."""
    if not values:
        return []
    path = tmp / f"values-{abs(hash(yaml.safe_dump(dict(values))))}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["--values", str(path)]


def helm_install(
    tools_bin: Path,
    name: str,
    namespace: str,
    tmp: Path,
    values: Mapping[str, Any] | None,
    kubeconfig: Path,
    verb: str = "install",
) -> subprocess.CompletedProcess[str]:
    """``helm install`` (or ``upgrade``) of the chart; CRDs come from the ``crds`` fixture."""
    return helm(
        tools_bin,
        verb,
        name,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        *values_args(tmp, values),
        kubeconfig=kubeconfig,
    )


def render(
    tools_bin: Path,
    tmp: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "rc",
    namespace: str = "rollcall",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` -> the list of rendered objects (hooks included)."""
    out = helm(
        tools_bin,
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        *values_args(tmp, values),
        *extra,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(
    docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> list[dict[str, Any]]:
    return [
        d
        for d in docs
        if d["kind"] == kind
        and (name is None or d["metadata"]["name"] == name)
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]


def one(
    docs: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> dict[str, Any]:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, (
        f"expected one {kind} {name or ''} in {namespace or 'any'}: {len(found)}"
    )
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every pod the chart renders, directly or through a controller."""
    for d in docs:
        where = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] == "Pod":
            yield where, d["spec"]
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield where, d["spec"]["template"]["spec"]


def env_of(container: Mapping[str, Any]) -> dict[str, Any]:
    """name -> literal value, or the valueFrom mapping (the apiserver drops empty values)."""
    return {
        e["name"]: e["valueFrom"] if "valueFrom" in e else e.get("value", "")
        for e in container["env"]
    }
