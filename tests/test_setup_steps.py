"""The set-up driver: which steps may start, what its lines say, and a real run of make targets."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from setupsteps import Status, finished_line, fmt_seconds, run, startable, validate

ALL = ("system", "venv", "controlplane", "tools", "models", "kueue")


@pytest.mark.parametrize(
    ("steps", "done", "running", "expected"),
    [
        # nothing done: every step without a prerequisite starts at once
        (ALL, (), (), ("system", "venv", "controlplane")),
        # the env is done: tools and models start; kueue still waits for the control plane
        (ALL, ("system", "venv"), ("controlplane",), ("tools", "models")),
        # the control plane is done: kueue may start
        (ALL, ("system", "venv", "controlplane"), ("tools",), ("models", "kueue")),
        # a prerequisite that was not asked for is not waited on (make builds it itself)
        (("tools", "models"), (), (), ("tools", "models")),
        (("controlplane", "kueue"), (), (), ("controlplane",)),
        # the demo's steps have no kueue
        (ALL[:5], ("system", "venv", "controlplane", "tools", "models"), (), ()),
    ],
)
def test_startable(
    steps: tuple[str, ...],
    done: tuple[str, ...],
    running: tuple[str, ...],
    expected: tuple[str, ...],
) -> None:
    waiting = tuple(s for s in steps if s not in done and s not in running)
    assert startable(Status(done, running, waiting), steps) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.04, "0.0 s"),
        (12.345, "12.3 s"),
        (59.9, "59.9 s"),
        (60, "1 min 00 s"),
        (641, "10 min 41 s"),
    ],
)
def test_fmt_seconds(seconds: float, expected: str) -> None:
    assert fmt_seconds(seconds) == expected


@pytest.mark.parametrize(
    ("step", "status", "total", "expected"),
    [
        (
            "venv",
            Status(("system", "venv"), ("controlplane",), ("tools", "models")),
            5,
            "[2/5] venv: 42.0 s — running: controlplane; next: tools, models",
        ),
        (
            "models",
            Status(("a", "b", "c"), ("controlplane",), ()),
            4,
            "[3/4] models: 42.0 s — running: controlplane",
        ),
        ("controlplane", Status(("a", "b"), (), ()), 2, "[2/2] controlplane: 42.0 s — set-up done"),
    ],
)
def test_finished_line(step: str, status: Status, total: int, expected: str) -> None:
    assert finished_line(step, 42.0, status, total) == expected


def test_a_step_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="'venv' given twice"):
        validate(["venv", "tools", "venv"])


MAKEFILE = """\
SHELL := /bin/bash
venv:
\t@echo venv >> order; echo building the env
tools:
\t@test -n "$$(grep venv order)" && echo tools >> order
controlplane:
\t@echo controlplane >> order
broken:
\t@echo 'the cause is here'; exit 3
"""


@pytest.fixture
def makedir(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(MAKEFILE)
    return tmp_path


def test_run_honours_prerequisites_and_reports_each_step(makedir: Path) -> None:
    out = io.StringIO()
    assert run(["tools", "venv", "controlplane"], ["make", "-C", str(makedir)], out) == 0
    order = (makedir / "order").read_text().split()
    assert sorted(order) == ["controlplane", "tools", "venv"]
    assert order.index("venv") < order.index("tools")  # tools waited for venv
    lines = out.getvalue().splitlines()
    ended = [line.split(":")[0] for line in lines[1:4]]  # "[1/3] venv", in the order they ended
    assert [e.split("] ")[0] for e in ended] == ["[1/3", "[2/3", "[3/3"]
    assert {e.split("] ")[1] for e in ended} == set(order)
    assert "building the env" not in out.getvalue()  # step output stays in its log
    assert lines[-1].startswith("set-up took ")


def test_a_failed_step_stops_the_run_and_shows_its_log(makedir: Path) -> None:
    out = io.StringIO()
    code = run(["broken", "tools"], ["make", "-C", str(makedir)], out)
    assert code != 0
    assert "broken failed" in out.getvalue()
    assert "the cause is here" in out.getvalue()
    assert "set-up took" not in out.getvalue()


def test_the_driver_runs_as_a_script_without_the_env(makedir: Path) -> None:
    """make calls it with the system python3, before the env exists."""
    script = Path(__file__).resolve().parents[1] / "hack" / "setupsteps.py"
    proc = subprocess.run(
        ["python3", "-I", str(script), "--make", f"make -C {makedir}", "controlplane"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[1/1] controlplane:" in proc.stdout
