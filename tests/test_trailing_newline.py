"""Names checked with a ``^...$`` pattern must be refused with a trailing newline.

``re.match`` lets ``$`` match before a final newline, so ``"7b\n"`` passed checks meant to
admit only letters and digits (a job id from a ``%0A`` in the path, a key file's digest or
namespace, a label value). Every such check now uses ``fullmatch``: each row fails with
``match``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rollcall_api.auth import parse_key_file
from rollcall_api.errors import ApiError
from rollcall_api.service import check_job_id
from rollcall_contract.labels import is_label_value
from rollcall_operator.builder import job_name


def _key_file_namespace(value: str) -> object:
    return parse_key_file(f'{"a" * 64}: {{school: x, namespaces: ["{value}"]}}')


def _key_file_digest(value: str) -> object:
    return parse_key_file(f'"{"a" * 63}{value}": {{school: x, namespaces: [a]}}')


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (check_job_id, "rj-7b-1", "rj-7b-1\n"),
        (_key_file_namespace, "school-a", "school-a\\n"),
        (_key_file_digest, "a", "a\\n"),
    ],
)
def test_a_trailing_newline_is_refused(check: Callable[[str], object], good: str, bad: str) -> None:
    check(good)
    with pytest.raises((ApiError, ValueError)):
        check(bad)


def test_a_label_value_with_a_trailing_newline_is_not_one() -> None:
    assert is_label_value("7B-maths") and not is_label_value("7B-maths\n")


def test_an_rj_name_with_a_trailing_newline_is_not_used_as_the_job_name() -> None:
    assert job_name("rj-7b") == "rj-7b"
    assert job_name("rj-7b\n") != "rj-7b\n"
