"""The CPU set-ups the API benchmarks compare (hack/apirig.py): which CPUs each side gets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apirig import apply_setup, cpu_setups


@pytest.mark.parametrize(
    ("cpus", "wanted", "expected"),
    [
        # name, server CPUs, rest CPUs, server session nice
        (
            [0, 1],
            ("shared", "own-cpu"),
            [("shared", {0, 1}, {0, 1}, 0), ("own-cpu", {0}, {0, 1}, -20)],
        ),
        ([3, 1, 2], ("own-cpu",), [("own-cpu", {1}, {1, 2, 3}, -20)]),
        (
            [0, 1],
            ("own-cpu", "shared"),
            [("own-cpu", {0}, {0, 1}, -20), ("shared", {0, 1}, {0, 1}, 0)],
        ),
        ([5], ("shared", "own-cpu"), [("shared", {5}, {5}, 0)]),  # one CPU: nothing to split
    ],
)
def test_setups_split_the_cpus(
    cpus: list[int], wanted: tuple[str, ...], expected: list[tuple[str, set[int], set[int], int]]
) -> None:
    got = [(s.name, set(s.server), set(s.rest), s.server_nice) for s in cpu_setups(cpus, wanted)]
    assert got == expected


def test_an_unknown_setup_is_refused() -> None:
    with pytest.raises(ValueError, match="nice-only"):
        cpu_setups([0, 1], ("shared", "nice-only"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_applying_a_setup_pins_every_thread_and_sets_the_session_nice() -> None:
    """A real process with threads, in a session of its own, as the benchmarks start servers."""
    code = (
        "import threading, time\n"
        "for _ in range(3):\n"
        "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "print(flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # its threads are running
        own, shared = cpu_setups(os.sched_getaffinity(0), ("own-cpu", "shared"))
        applied = apply_setup(own, proc.pid, [])
        tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
        assert len(tids) == 4
        assert all(os.sched_getaffinity(t) == own.server for t in tids)
        if os.geteuid() == 0:
            assert applied == "server session nice -20"
        apply_setup(shared, proc.pid, [])
        assert all(os.sched_getaffinity(t) == shared.server for t in tids)
        if os.geteuid() == 0:
            assert Path(f"/proc/{proc.pid}/autogroup").read_text().split()[-1] == "0"
    finally:
        proc.kill()
        proc.wait()
