"""Image digests in charts/rollcall, rendered with the real helm: a digest pins every image the chart
renders (and the job image the operator puts in each Job), wins over a tag, and a malformed one
fails the install with the schema's message instead of failing every pull later."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pydantic import ValidationError

from helmchart import CHART, env_of, helm, one, pod_specs, render, values_args
from rollcall_contract.model import GROUP
from rollcall_operator.builder import build_job
from rollcall_operator.settings import ENV_PREFIX, OperatorSettings, check_image_reference

FULL = "rc-rollcall"
APP_VERSION = "0.1.0"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "ab" * 32
D3 = "sha256:" + "0123456789abcdef" * 4

# value path -> (kind/name of the pod that runs it, default repository); the job image has no pod of
# its own in the chart: it reaches the operator as ROLLCALL_OPERATOR_IMAGE.
_IMAGES: dict[str, tuple[str, str]] = {
    "operator": (f"Deployment/{FULL}-operator", "ghcr.io/rollcall/rollcall-operator"),
    "api": (f"Deployment/{FULL}-api", "ghcr.io/rollcall/rollcall-api"),
    "redis": (f"StatefulSet/{FULL}-redis", "docker.io/library/redis"),
}


def images_by_pod(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {where: spec["containers"][0]["image"] for where, spec in pod_specs(docs)}


def job_image_env(docs: list[dict[str, Any]]) -> str:
    container = one(docs, "Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]
    image = env_of(container["containers"][0])[f"{ENV_PREFIX}IMAGE"]
    assert isinstance(image, str)
    return image


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ({}, "{repo}:{app}"),  # chart default: the appVersion tag
        ({"tag": "1.2.3"}, "{repo}:1.2.3"),
        ({"digest": D1}, "{repo}@" + D1),
        ({"tag": "1.2.3", "digest": D2}, "{repo}@" + D2),  # digest wins
        ({"repository": "reg.example.org/x", "tag": "7", "digest": D3}, "reg.example.org/x@" + D3),
    ],
    ids=["default", "tag-only", "digest-only", "both-digest-wins", "own-repository"],
)
@pytest.mark.parametrize("component", [*_IMAGES, "job"])
def test_each_image_renders_its_tag_or_digest(
    tools_bin: Path, tmp_path: Path, component: str, image: dict[str, str], expected: str
) -> None:
    docs = render(tools_bin, tmp_path, {component: {"image": image}})
    if component == "job":
        repo, rendered = "ghcr.io/rollcall/rollcall-job", job_image_env(docs)
    else:
        where, repo = _IMAGES[component]
        rendered = images_by_pod(docs)[where]
    default_tag = "7.4.2-alpine" if component == "redis" else APP_VERSION
    assert rendered == expected.format(repo=image.get("repository", repo), app=default_tag)


def test_with_every_digest_set_no_pod_runs_a_tag(tools_bin: Path, tmp_path: Path) -> None:
    """Every image the chart renders (test hook included) and the job image follow their digest."""
    digests = {"operator": D1, "api": D2, "job": D3, "redis": D1}
    values = {name: {"image": {"tag": "9.9", "digest": d}} for name, d in digests.items()}
    docs = render(tools_bin, tmp_path, values)
    images = images_by_pod(docs)
    assert images == {
        f"Deployment/{FULL}-operator": f"ghcr.io/rollcall/rollcall-operator@{D1}",
        f"Deployment/{FULL}-api": f"ghcr.io/rollcall/rollcall-api@{D2}",
        f"StatefulSet/{FULL}-redis": f"docker.io/library/redis@{D1}",
        f"Pod/{FULL}-test-readyz": f"ghcr.io/rollcall/rollcall-api@{D2}",
    }
    assert job_image_env(docs) == f"ghcr.io/rollcall/rollcall-job@{D3}"


@pytest.mark.parametrize(
    ("api", "tests", "expected"),
    [
        ({"digest": D1}, {}, f"ghcr.io/rollcall/rollcall-api@{D1}"),
        ({"tag": "2.0"}, {}, "ghcr.io/rollcall/rollcall-api:2.0"),
        # another repository never inherits the API's digest (it names another image), only its tag
        ({"tag": "2.0", "digest": D1}, {"repository": "reg/py"}, "reg/py:2.0"),
        ({"digest": D1}, {"repository": "reg/py", "digest": D2}, f"reg/py@{D2}"),
        ({"digest": D1}, {"tag": "3.0"}, "ghcr.io/rollcall/rollcall-api:3.0"),
    ],
)
def test_helm_test_pod_image_follows_the_api_image_unless_set(
    tools_bin: Path, tmp_path: Path, api: dict[str, str], tests: dict[str, str], expected: str
) -> None:
    docs = render(tools_bin, tmp_path, {"api": {"image": api}, "tests": {"image": tests}})
    assert images_by_pod(docs)[f"Pod/{FULL}-test-readyz"] == expected


_BAD_DIGESTS = [
    "sha256:" + "1" * 63,  # one digit short
    "sha256:" + "A" * 64,  # registries print lowercase
    "sha512:" + "1" * 128,
    "1" * 64,  # no algorithm
    "sha256:" + "1" * 64 + " ",
]


@pytest.mark.parametrize(
    ("component", "digest"),
    [(c, "latest") for c in ("operator", "api", "job", "redis", "tests")]
    + [("job", d) for d in _BAD_DIGESTS],
)
def test_a_malformed_digest_fails_helm_with_the_schema_message(
    tools_bin: Path, tmp_path: Path, component: str, digest: str
) -> None:
    args = values_args(tmp_path, {component: {"image": {"digest": digest}}})
    for verb in (["template", "rc"], ["lint"]):
        result = helm(tools_bin, *verb, str(CHART), *args, check=False)
        assert result.returncode != 0, (verb, digest)
        out = result.stdout + result.stderr
        assert f"/{component}/image/digest" in out and "does not match pattern" in out, out


def test_redis_needs_a_tag_or_a_digest(tools_bin: Path, tmp_path: Path) -> None:
    """The appVersion fallback is rollcall's version, never a Redis tag."""
    bare = helm(
        tools_bin,
        "template",
        "rc",
        str(CHART),
        *values_args(tmp_path, {"redis": {"image": {"tag": ""}}}),
        check=False,
    )
    assert bare.returncode != 0 and "/redis/image" in bare.stderr, bare.stderr
    docs = render(tools_bin, tmp_path, {"redis": {"image": {"tag": "", "digest": D1}}})
    assert images_by_pod(docs)[f"StatefulSet/{FULL}-redis"] == f"docker.io/library/redis@{D1}"


def test_every_template_image_goes_through_the_one_helper() -> None:
    """No template formats an image reference itself (a copy would miss the digest rule)."""
    lines = [
        (path.name, line.strip())
        for path in (CHART / "templates").rglob("*.yaml")
        for line in path.read_text().splitlines()
        if re.match(r"\s*-?\s*image:", line)
    ]
    assert len(lines) == 4, lines  # operator, api, redis, helm test pod
    stray = [x for x in lines if not re.search(r'include "rollcall\.(tests\.)?image"', x[1])]
    assert not stray, stray


def test_job_digest_reaches_the_operator_and_the_job_it_creates(
    tools_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    k8s_api: client.ApiClient,
    namespace: str,
) -> None:
    """Chart values -> operator env -> OperatorSettings -> built Job -> the real apiserver."""
    image = {"repository": "registry.example.org/rollcall-job", "tag": "1.2.3", "digest": D2}
    docs = render(tools_bin, tmp_path, {"job": {"image": image}})
    operator = one(docs, "Deployment", f"{FULL}-operator")["spec"]["template"]["spec"]
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env_of(operator["containers"][0]).items():
        monkeypatch.setenv(name, value if isinstance(value, str) else "redis://secret:6379/0")
    settings = OperatorSettings()
    assert settings.image == f"registry.example.org/rollcall-job@{D2}"
    assert settings.image_pull_policy == "IfNotPresent"

    rj = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": {"name": "math-7b", "namespace": namespace, "uid": "u-1"},
        "spec": {"classCode": "MATH-7B", "images": {"claimName": "photos"}, "roster": ["s1"]},
    }
    job = build_job(rj, settings)
    # server-side dry run: the apiserver validates and defaults the Job as it would store it
    batch = client.BatchV1Api(k8s_api)
    stored = batch.create_namespaced_job(namespace, client.V1Job.model_validate(job), dry_run="All")
    assert stored.spec is not None and stored.spec.template.spec is not None
    (container,) = stored.spec.template.spec.containers
    assert container.image == f"registry.example.org/rollcall-job@{D2}"
    assert container.image_pull_policy == "IfNotPresent"


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        ("ghcr.io/rollcall/rollcall-job:0.1.0", True),
        (f"ghcr.io/rollcall/rollcall-job@{D1}", True),
        (f"registry.example.org:5000/ns/job:1.2@{D3}", True),  # tag kept beside the digest
        ("job", True),
        ("ghcr.io/rollcall/rollcall-job@latest", False),
        (f"ghcr.io/rollcall/rollcall-job@{D1[:-1]}", False),
        (f"ghcr.io/rollcall/rollcall-job@{D1.upper()}", False),
        (f"@{D1}", False),
        (f"a@b@{D1}", False),
        ("", False),
        ("ghcr.io/rollcall/rollcall-job:0.1.0 ", False),
    ],
)
def test_operator_refuses_a_job_image_no_kubelet_could_pull(reference: str, ok: bool) -> None:
    if ok:
        assert check_image_reference(reference) == reference
        assert OperatorSettings(image=reference).image == reference
    else:
        with pytest.raises(ValueError, match="image"):
            check_image_reference(reference)
        with pytest.raises(ValidationError):
            OperatorSettings(image=reference)


def test_operator_refuses_an_unknown_pull_policy() -> None:
    with pytest.raises(ValidationError):
        OperatorSettings(image_pull_policy="IfNotPresnt")
