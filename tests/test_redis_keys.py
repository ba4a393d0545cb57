"""The tenant-separated Redis key layout (pure): every key carries its school, no name escapes it."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from rollcall_api.erasure import results_pattern
from rollcall_contract import keys
from rollcall_contract.model import IDENT, parse_spec
from rollcall_operator.builder import build_job
from rollcall_operator.settings import OperatorSettings

TENANT_KEYS: list[tuple[str, Callable[[str], str]]] = [
    ("gallery", lambda t: keys.gallery(t, "grade7-b", "dlib-resnet-v1")),
    ("gallery_meta", lambda t: keys.gallery_meta(t, "grade7-b", "dlib-resnet-v1")),
    ("gallery_packed", lambda t: keys.gallery_packed(t, "grade7-b", "dlib-resnet-v1")),
    ("job_results", lambda t: keys.job_results(t, "0b6e-uid")),
    ("job_results_staging", lambda t: keys.job_results_staging(t, "0b6e-uid", "2")),
    ("job_results_wait", lambda t: keys.job_results_wait(t, "0b6e-uid")),
    ("gallery_wait", lambda t: keys.gallery_wait(t, "grade7-b", "dlib-resnet-v1")),
    ("erased_unconfirmed", lambda t: keys.erased_unconfirmed(t, "grade7-b")),
    ("erase_wait", lambda t: keys.erase_wait(t, "17")),
    ("job_progress", lambda t: keys.job_progress(t, "0b6e-uid")),
    ("idempotency", lambda t: keys.idempotency(t, "retry:{x}*")),
]


@pytest.mark.parametrize(("kind", "make"), TENANT_KEYS)
def test_every_key_is_inside_its_tenant_pattern_only(kind: str, make: Callable[[str], str]) -> None:
    key = make("school-north")
    assert key.startswith(keys.tenant_prefix("school-north")), kind
    assert fnmatch.fnmatchcase(key, keys.tenant_pattern("school-north"))
    # Same class code in another school (including one whose name extends this one's): another key.
    for other in ("school-south", "school-north-2", "school"):
        assert make(other) != key
        assert not fnmatch.fnmatchcase(key, keys.tenant_pattern(other)), (kind, other)


@pytest.mark.parametrize(
    "tenant",
    ["", "School", "a:b", "a*", "-a", "a-", "a.b", "a_b", "x" * 64, "rollcall:*", "a\nb", "é"],
)
def test_a_tenant_that_is_not_a_dns_label_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        keys.tenant_prefix(tenant)
    with pytest.raises(ValueError):
        keys.gallery(tenant, "6b", "m")


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda v: keys.gallery("t", v, "m"), "6b}:x"),
        (lambda v: keys.gallery("t", v, "m"), "a:b"),
        (lambda v: keys.gallery("t", v, "m"), "*"),
        (lambda v: keys.gallery("t", v, "m"), ""),
        (lambda v: keys.gallery_meta("t", "6b", v), "m{x}"),
        (lambda v: keys.gallery_match("t", v), "a?"),
        (lambda v: keys.job_progress("t", v), "../x:y"),
        (lambda v: keys.job_results_staging("t", "u", v), "1 2"),
        (lambda v: keys.idempotency("t", v), "has space"),
        (lambda v: keys.idempotency("t", v), "x" * 256),
        (lambda v: keys.legacy_gallery(v, "m"), "a:b"),
    ],
)
def test_names_that_could_leave_their_key_or_hash_tag_are_refused(
    make: Callable[[str], str], bad: str
) -> None:
    with pytest.raises(ValueError):
        make(bad)


def test_gallery_keys_of_one_class_share_one_hash_tag() -> None:
    made = [
        f("t", "6b", "dlib-resnet-v1")
        for f in (keys.gallery, keys.gallery_meta, keys.gallery_packed, keys.gallery_wait)
    ]
    tags = {k[k.index("{") + 1 : k.index("}")] for k in made}
    assert tags == {"6b:dlib-resnet-v1"}
    results = (
        keys.job_results("t", "u1"),
        keys.job_results_staging("t", "u1", "3"),
        keys.job_results_wait("t", "u1"),
    )
    assert {k[k.index("{") + 1 : k.index("}")] for k in results} == {"u1"}


@pytest.mark.parametrize(
    ("key", "matches"),
    [
        (keys.gallery("t", "6b", "dlib-resnet-v1"), True),
        (keys.gallery("t", "6b", "mobilefacenet-sirius-v1"), True),
        (keys.gallery_meta("t", "6b", "dlib-resnet-v1"), False),
        (keys.gallery_packed("t", "6b", "dlib-resnet-v1"), False),
        (keys.gallery_wait("t", "6b", "dlib-resnet-v1"), False),
        (keys.gallery("t", "6b2", "m"), False),
        (keys.gallery("t", "6", "m"), False),
        (keys.gallery("u", "6b", "m"), False),
        (keys.legacy_gallery("6b", "m"), False),
    ],
)
def test_gallery_match_finds_each_model_of_one_class(key: str, matches: bool) -> None:
    assert fnmatch.fnmatchcase(key, keys.gallery_match("t", "6b")) is matches


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("a*b", r"a\*b"),
        ("a?", r"a\?"),
        ("[x]", r"\[x\]"),
        ("a\\b", r"a\\b"),
        ("plain.-_", "plain.-_"),
    ],
)
def test_glob_escape(text: str, escaped: str) -> None:
    assert keys.glob_escape(text) == escaped


def test_legacy_layout_is_the_old_untenanted_one() -> None:
    assert keys.legacy_gallery("6b", "m") == "rollcall:gallery:{6b:m}"
    assert fnmatch.fnmatchcase(keys.legacy_gallery("6b", "m2"), keys.legacy_gallery_match("6b"))


# --- no spec field can name another school's keys ------------------------------------------------


def _rj(namespace: str, **spec: Any) -> dict[str, Any]:
    body = {"classCode": "grade7-b", "images": {"claimName": "photos"}, "roster": ["s1"], **spec}
    meta = {"name": "rj-1", "namespace": namespace, "uid": "0b6e-uid"}
    return {
        "apiVersion": "rollcall.io/v1alpha1",
        "kind": "RecognitionJob",
        "metadata": meta,
        "spec": body,
    }


@pytest.mark.parametrize("spec", [{}, {"gallery": "grade7-b"}, {"gallery": "school-b"}])
def test_the_jobs_tenant_is_the_rjs_namespace_whatever_the_spec_says(spec: dict[str, Any]) -> None:
    job = build_job(_rj("school-a", **spec), OperatorSettings())
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["ROLLCALL_JOB_NAMESPACE"] == "school-a" == job["metadata"]["namespace"]
    key = keys.gallery(env["ROLLCALL_JOB_NAMESPACE"], env["ROLLCALL_GALLERY"], "m")
    assert key.startswith(keys.tenant_prefix("school-a"))


@pytest.mark.parametrize(
    "spec",
    [
        {"gallery": "school-b:grade7-b"},
        {"gallery": "{grade7-b:m}"},
        {"gallery": "grade7-b*"},
        {"gallery": "../school-b"},
        {"classCode": "x}:y"},
        {"gallery": ""},
    ],
)
def test_gallery_names_that_could_leave_the_tenant_are_refused_by_the_model(
    spec: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError):
        parse_spec(_rj("school-a", **spec)["spec"])


@pytest.mark.parametrize("name", ["job_namespace", "JOB_NAMESPACE", "redis_url", "job_uid"])
def test_operator_extra_env_cannot_override_what_comes_from_each_rj(name: str) -> None:
    with pytest.raises(ValidationError, match="comes from each RJ"):
        OperatorSettings(extra_env={name: "school-b"})
    assert OperatorSettings(extra_env={"providers": "[]"}).extra_env == {"providers": "[]"}


@given(
    name=st.from_regex(IDENT, fullmatch=True).filter(lambda s: len(s) <= 64),
    model=st.from_regex(r"[A-Za-z0-9._-]{1,40}", fullmatch=True),
)
def test_any_name_the_model_accepts_stays_inside_its_tenant_and_hash_tag(
    name: str, model: str
) -> None:
    for make in (keys.gallery, keys.gallery_meta, keys.gallery_packed):
        key = make("school-a", name, model)
        assert key.startswith("rollcall:school-a:gallery:{")
        assert key[key.index("{") + 1 : key.index("}")] == f"{name}:{model}"
    assert fnmatch.fnmatchcase(
        keys.gallery("school-a", name, model), keys.gallery_match("school-a", name)
    )


@pytest.mark.parametrize(
    ("key", "matches"),
    [
        (keys.job_results("t", "u1"), True),
        (keys.job_results_staging("t", "u1", "3"), False),
        (keys.job_results_wait("t", "u1"), False),
        (keys.job_progress("t", "u1"), False),
        (keys.job_results("u", "u1"), False),
    ],
)
def test_the_erase_scan_for_results_meets_published_results_only(key: str, matches: bool) -> None:
    assert fnmatch.fnmatchcase(key, results_pattern("t")) is matches
