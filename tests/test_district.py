"""The district day's arithmetic (hack/district.py): plan, pod lengths, waits, evenness, busy share.

The bench itself (bench/bench_district.py) runs against the real rig and is not a test; what it
computes from its measurements is checked here on hand-made figures.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from district import (
    Life,
    PodRun,
    busy_share,
    evenness,
    first_starts,
    idle_while_waiting,
    peak_overlap,
    per_school,
    period_gap,
    plan_day,
    pod_seconds,
    read_runs,
    segments,
    wait_figures,
)


def test_plan_day_has_every_class_once_per_period_in_a_mixed_order() -> None:
    day = plan_day(schools=5, classes=3, periods=4, seed=1)
    assert [len(burst) for burst in day] == [15, 15, 15, 15]
    names = Counter((rj.school, rj.name) for burst in day for rj in burst)
    assert len(names) == 60 and set(names.values()) == {1}
    assert all(rj.period == p for p, burst in enumerate(day) for rj in burst)
    # the burst is not school-major: the first five RJs are not all one school's
    assert len({rj.school for rj in day[0][:5]}) > 1
    assert plan_day(5, 3, 4, seed=1) == day
    assert plan_day(5, 3, 4, seed=2) != day


@pytest.mark.parametrize(
    ("low", "high"),
    [(1.0, 3.0), (0.5, 0.5), (2.0, 10.0)],
)
def test_pod_seconds_stay_in_range_and_are_stable(low: float, high: float) -> None:
    values = [pod_seconds(f"school-000/c{i}", low, high) for i in range(200)]
    assert all(low <= v <= high for v in values)
    assert values == [pod_seconds(f"school-000/c{i}", low, high) for i in range(200)]
    if high > low:  # spread over the range, not bunched at one end
        assert min(values) < low + (high - low) / 4 and max(values) > high - (high - low) / 4


@pytest.mark.parametrize(
    ("jobs", "mean", "gpus", "slack", "gap"),
    [(300, 2.0, 8, 1.0, 75.0), (300, 2.0, 8, 1.2, 90.0), (60, 2.0, 8, 1.2, 18.0)],
)
def test_period_gap(jobs: int, mean: float, gpus: int, slack: float, gap: float) -> None:
    assert period_gap(jobs, mean, gpus, slack) == pytest.approx(gap)


@pytest.mark.parametrize(
    ("waits", "p50", "p99", "mean"),
    [
        ([1.0], 1.0, 1.0, 1.0),
        ([3.0, 1.0, 2.0], 2.0, 3.0, 2.0),
        ([float(i) for i in range(1, 101)], 50.5, 99.0, 50.5),
        ([0.0] * 99 + [50.0], 0.0, 0.0, 0.5),
    ],
)
def test_wait_figures(waits: list[float], p50: float, p99: float, mean: float) -> None:
    f = wait_figures("s", waits)
    assert (f.count, f.p50, f.p99) == (len(waits), p50, p99)
    assert f.mean == pytest.approx(mean)


@pytest.mark.parametrize(
    ("waits", "order", "even"),
    [
        ({"a": [1.0, 3.0], "b": [4.0], "c": [1.0]}, ["c", "a", "b"], 4.0),
        ({"a": [2.0], "b": [2.0, 2.0]}, ["a", "b"], 1.0),
        ({"a": [0.0], "b": [1.0]}, ["a", "b"], math.inf),
        ({"a": [1.0], "b": []}, ["a"], 1.0),
    ],
)
def test_per_school_and_evenness(
    waits: dict[str, list[float]], order: list[str], even: float
) -> None:
    schools = per_school(waits)
    assert [s.school for s in schools] == order
    assert evenness(schools) == even


@pytest.mark.parametrize(
    ("runs", "gpus", "makespan", "share"),
    [
        ([10.0] * 8, 8, 10.0, 1.0),
        ([2.0, 2.0], 8, 1.0, 0.5),
        ([], 8, 5.0, 0.0),
    ],
)
def test_busy_share(runs: list[float], gpus: int, makespan: float, share: float) -> None:
    assert busy_share(runs, gpus, makespan) == pytest.approx(share)


def test_busy_share_of_no_time_is_nan() -> None:
    assert math.isnan(busy_share([1.0], 8, 0.0))


def test_first_starts_take_the_first_attempt_and_read_runs_round_trips(tmp_path: Path) -> None:
    runs = [
        PodRun("s", "j1", "u1", "n0", 5.0, 6.0, 137),
        PodRun("s", "j1", "u1", "n1", 3.0, 4.0, 0),
        PodRun("s", "j2", "u2", "n0", 7.0, 9.0, 0),
    ]
    path = tmp_path / "pods.jsonl"
    path.write_text("".join(json.dumps(r.__dict__) + "\n" for r in runs))
    assert read_runs(path) == runs
    assert read_runs(tmp_path / "absent.jsonl") == []
    assert first_starts(runs) == {"u1": 3.0, "u2": 7.0}


def test_segments_split_each_wait_between_consecutive_stages() -> None:
    created = {"a": 0.0, "b": 1.0, "c": 2.0}
    stages = [
        ("admit", {"a": 2.0, "b": 1.5}),
        ("pod", {"a": 2.5, "b": 3.5}),
        ("start", {"a": 3.0}),
    ]
    assert segments(created, stages) == {"admit": [2.0, 0.5], "pod": [0.5, 2.0], "start": [0.5]}


@pytest.mark.parametrize(
    ("spans", "peaks"),
    [
        ([("n0", 0.0, 2.0), ("n0", 1.0, 3.0), ("n1", 0.0, 1.0)], {"n0": 2, "n1": 1}),
        ([("n0", 0.0, 1.0), ("n0", 1.0, 2.0)], {"n0": 1}),  # back to back: one GPU
        ([("n0", 0.0, 5.0), ("n0", 1.0, 2.0), ("n0", 1.5, 3.0)], {"n0": 3}),
        ([], {}),
    ],
)
def test_peak_overlap(spans: list[tuple[str, float, float]], peaks: dict[str, int]) -> None:
    runs = [PodRun("s", f"j{i}", f"u{i}", n, a, b, 0) for i, (n, a, b) in enumerate(spans)]
    assert peak_overlap(runs) == peaks


@pytest.mark.parametrize(
    ("lives", "gpus", "cap", "idle"),
    [
        # handed over at once: a second RJ starts as the first ends on the one GPU
        ([("a", 0, 0, 2), ("a", 0, 2, 4)], 1, 2, 0.0),
        # one GPU idle for 1 s between the first's end (2) and the second's start (3)
        ([("a", 0, 0, 2), ("a", 0, 3, 5)], 1, 2, 1.0),
        # two GPUs; the second RJ waits 1 s although a GPU is free: 1 GPU-second lost
        ([("a", 0, 0, 2), ("b", 0, 1, 3)], 2, 2, 1.0),
        # the school's cap (1) forbids the second RJ while the first runs: nothing lost
        ([("a", 0, 0, 2), ("a", 0, 2, 4)], 2, 1, 0.0),
        # ... but once the first ends, its wait counts (3 to 4)
        ([("a", 0, 0, 3), ("a", 0, 4, 5)], 2, 1, 1.0),
        # 3 RJs wait 4 s on 2 free GPUs: 2 GPU x 4 s; the third then waits for a full pool: 0
        ([("a", 0, 4, 5), ("b", 0, 4, 5), ("c", 0, 5, 6)], 2, 1, 8.0),
        # the create's reply seen after the pod started (0.2 s): the RJ never waited
        ([("a", 1.0, 0.8, 2.0)], 1, 1, 0.0),
        ([], 8, 2, 0.0),
    ],
)
def test_idle_while_waiting(
    lives: list[tuple[str, float, float, float]], gpus: int, cap: int, idle: float
) -> None:
    assert idle_while_waiting([Life(*life) for life in lives], gpus, cap) == pytest.approx(idle)
