"""The RecognitionJob CustomResourceDefinition, generated from the pydantic models in ``model.py``.

Run ``python -m rollcall_operator.crd > charts/rollcall/crds/recognitionjobs.yaml``; a test fails
when the committed file drifts from the models. The pydantic JSON schema is turned into a
*structural* OpenAPI v3 schema as the apiserver demands: ``$ref`` inlined, ``anyOf [X, null]``
turned into ``nullable``, no ``additionalProperties: false`` (pruning drops unknown fields instead),
and objects that default to an empty model given ``default: {}`` so that nested defaults apply
(``status`` too: a new RJ reads as Pending before anyone writes its status).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from rollcall_contract.model import (
    GROUP,
    KIND,
    MUTABLE_SPEC_FIELDS,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    TERMINAL_PHASES,
    VERSION,
    RecognitionJobSpec,
    RecognitionJobStatus,
)

# JSON-schema keywords the structural OpenAPI subset keeps; the rest (title, $defs) are dropped.
_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "format",
    "nullable",
    "required",
}
_IMMUTABLE_MESSAGE = (
    "spec cannot change once the RecognitionJob exists (only runPolicy.suspend can): "
    "delete it and create a new one"
)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref``; siblings of a ``$ref`` (description, default) win over the target."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _structural(node: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """Convert one resolved JSON-schema node to the structural OpenAPI v3 subset."""
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1 or len(variants) == len(node["anyOf"]):
            raise ValueError(f"unsupported anyOf: {node['anyOf']!r}")
        merged = {**variants[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        merged["nullable"] = True
        if merged.get("default", ...) is None:
            del merged["default"]
        return _structural(merged, required=required)
    out: dict[str, Any] = {
        k: v for k, v in node.items() if k in _KEEP or k.startswith("x-kubernetes-")
    }
    if node.get("type") == "object":
        props = node.get("properties", {})
        out["properties"] = {
            name: _structural(sub, required=name in node.get("required", ()))
            for name, sub in props.items()
        }
        if not required and "default" not in out and not out.get("nullable"):
            # A sub-model with default_factory: an empty object lets the apiserver fill its fields.
            out["default"] = {}
    elif node.get("type") == "array":
        out["items"] = _structural(node["items"])
        if not required and "default" not in out and not out.get("nullable"):
            out["default"] = []
    if out.get("default") is None:
        out.pop("default", None)
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of one pydantic model (wire names, i.e. camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _structural(_resolve(raw, defs))


def _immutability_rule(spec: dict[str, Any]) -> dict[str, str]:
    """A transition rule: every spec field but those in MUTABLE_SPEC_FIELDS keeps its old value.

    The Job is built once from the spec, so a later edit would silently not apply; rejecting it
    tells the user to re-create the RJ instead.
    """
    clauses: list[str] = []

    def same(path: str, node: dict[str, Any], required: set[str]) -> None:
        for name, sub in node["properties"].items():
            full = f"{path}.{name}".lstrip(".")
            if full in MUTABLE_SPEC_FIELDS:
                continue
            if any(m.startswith(full + ".") for m in MUTABLE_SPEC_FIELDS):
                same(full, sub, set(sub.get("required", ())))
                continue
            new, old = f"self.{full}", f"oldSelf.{full}"
            if name in required or "default" in sub:
                clauses.append(f"{new} == {old}")
            else:
                clauses.append(f"has({new}) == has({old}) && (!has({new}) || {new} == {old})")

    same("", spec, set(spec.get("required", ())))
    return {"rule": " && ".join(clauses), "message": _IMMUTABLE_MESSAGE}


_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Class", "type": "string", "jsonPath": ".spec.classCode"},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.text"},
    {"name": "Present", "type": "integer", "jsonPath": ".status.summary.present"},
    {"name": "Uncertain", "type": "integer", "jsonPath": ".status.summary.uncertain"},
    {"name": "Absent", "type": "integer", "jsonPath": ".status.summary.absent", "priority": 1},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Model", "type": "string", "jsonPath": ".status.model", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


_TERMINAL = ", ".join(f"'{p.value}'" for p in sorted(TERMINAL_PHASES))
# Server-side, so no writer (a stale operator replica, a hand-made patch) can revive a finished RJ.
_FINAL_PHASE_RULE = {
    "rule": f"!has(oldSelf.phase) || !(oldSelf.phase in [{_TERMINAL}]) "
    "|| (has(self.phase) && self.phase == oldSelf.phase)",
    "message": "a finished RecognitionJob's phase is final",
}


def build_crd() -> dict[str, Any]:
    """The CRD manifest as a dict, ready for ``yaml.safe_dump`` or the apiextensions API."""
    spec = model_schema(RecognitionJobSpec)
    spec.pop("default", None)
    spec["x-kubernetes-validations"] = [
        *spec.get("x-kubernetes-validations", []),
        _immutability_rule(spec),
    ]
    status = model_schema(RecognitionJobStatus)
    # The apiserver applies defaults whenever it reads an RJ (GET, LIST, watch, the create's answer),
    # so with ``status: {}`` a new RJ reads as phase Pending (the model's default) with no write;
    # the operator writes status first when there is more to say (Queued, Running, a reason).
    status["default"] = {}
    conditions = status["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    status["x-kubernetes-validations"] = [_FINAL_PHASE_RULE]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {
                "app.kubernetes.io/name": "rollcall",
                "app.kubernetes.io/part-of": "rollcall",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["rollcall"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A face-recognition run over one class's photos, "
                            "executed as a GPU Job by the rollcall operator.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m rollcall_operator.crd` from contract/rollcall_contract/model.py.\n"
    "# Do not edit: change the model and regenerate (tests/test_crd_drift.py checks this file).\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
