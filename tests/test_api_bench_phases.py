"""bench_api_submit's phase order with a ``--baseline`` API: both APIs in every round, each
between direct phases, their order alternating so neither always runs right after a direct one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import psutil
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_api_submit.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_api_submit", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("names", "rounds", "expected"),
    [
        (
            [""],
            2,
            "direct plain idempotent direct plain idempotent direct",
        ),
        (
            ["", "baseline"],
            2,
            "direct plain idempotent baseline_plain baseline_idempotent "
            "direct baseline_plain baseline_idempotent plain idempotent direct",
        ),
        (["", "baseline"], 1, "direct plain idempotent baseline_plain baseline_idempotent direct"),
    ],
)
def test_rounds_interleave_both_apis_between_direct_phases(
    bench: ModuleType, names: list[str], rounds: int, expected: str
) -> None:
    me = psutil.Process()
    apis = [bench.Api(name, f"http://{name}", f"http://{name}/m", me) for name in names]
    phases = bench.round_phases(apis, rounds)
    assert " ".join(phase.replace(" ", "_") for phase, _ in phases) == expected
    assert all((api is None) == (phase == "direct") for phase, api in phases)
    assert all(api is None or phase.startswith(api.name) for phase, api in phases)
