"""The committed CRD YAML is exactly what the pydantic model generates, and it is structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rollcall_operator import crd

CRD_FILE = Path(__file__).parent.parent / "charts" / "rollcall" / "crds" / "recognitionjobs.yaml"


def test_committed_crd_matches_the_model() -> None:
    assert CRD_FILE.read_text() == crd.render(), (
        "charts/rollcall/crds/recognitionjobs.yaml drifted from model.py: run "
        "`python -m rollcall_operator.crd > charts/rollcall/crds/recognitionjobs.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[str]:
    """Every schema-node path, checking the structural-schema rules the apiserver enforces."""
    seen = [path]
    assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
    assert not ("properties" in node and "additionalProperties" in node), path
    assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
    for name, sub in node.get("properties", {}).items():
        seen += _walk(sub, f"{path}.{name}")
    if "items" in node:
        seen += _walk(node["items"], f"{path}[]")
    return seen


def test_schema_is_structural_with_defaults() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    paths = _walk(schema)
    assert ".spec.matching.topK" in paths
    spec = schema["properties"]["spec"]["properties"]
    assert spec["matching"]["default"] == {}
    # a new RJ reads as Pending before any status write
    status = schema["properties"]["status"]
    assert status["default"] == {} and status["properties"]["phase"]["default"] == "Pending"
    assert spec["matching"]["properties"]["threshold"]["nullable"] is True
    assert "default" not in spec["matching"]["properties"]["threshold"]
    assert spec["runPolicy"]["properties"]["backoffLimit"]["default"] == 2
    assert spec["roster"]["x-kubernetes-list-type"] == "set"
    assert spec["mode"]["enum"] == ["identify", "enroll"]


def test_names_columns_and_subresources() -> None:
    manifest = yaml.safe_load(CRD_FILE.read_text())
    version = manifest["spec"]["versions"][0]
    assert manifest["spec"]["names"]["shortNames"] == ["rj"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"].upper() for c in version["additionalPrinterColumns"]}
    assert {"PHASE", "PROGRESS", "PRESENT", "AGE", "CLASS", "MODE"} <= columns


def test_immutability_rule_leaves_suspend_mutable() -> None:
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = next(r for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"])["rule"]
    assert "self.runPolicy.backoffLimit == oldSelf.runPolicy.backoffLimit" in rule
    assert "suspend" not in rule
