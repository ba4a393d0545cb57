"""The session factory: CUDA first only when installed, CPU always last, batches split and
joined back in order."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rollcall_job.runtime import (
    CPU,
    CUDA,
    choose_providers,
    cpu_budget,
    load_model,
    pipelined_threads,
    quota_cpus,
)

TRT = "TensorrtExecutionProvider"


@pytest.mark.parametrize(
    ("available", "requested", "expected"),
    [
        ([CPU], None, [CPU]),  # CPU-only wheel
        ([CUDA, CPU], None, [CUDA, CPU]),  # onnxruntime-gpu: CUDA first
        ([CPU], [CUDA], [CPU]),  # asked for CUDA on a CPU wheel: fall back
        ([TRT, CUDA, CPU], [TRT, CUDA], [TRT, CUDA, CPU]),  # explicit order kept
        ([TRT, CUDA, CPU], [CPU], [CPU]),  # CPU forced
        ([CUDA, CPU], [CPU, CUDA], [CUDA, CPU]),  # CPU is always the last resort
    ],
)
def test_choose_providers(
    monkeypatch: pytest.MonkeyPatch,
    available: list[str],
    requested: list[str] | None,
    expected: list[str],
) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    assert choose_providers(requested) == expected


def _doubler(path: Path) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "x"], ["twice"]),
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0, axes=[1]),
        ],
        "doubler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [
            helper.make_tensor_value_info("twice", TensorProto.FLOAT, ["n", 3]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["n"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_batched_runs_return_every_output_in_order(tmp_path: Path, batch_size: int) -> None:
    model = load_model(
        _doubler(tmp_path / "d.onnx"), threads=1, batch_size=batch_size, warm_up_shape=(1, 3)
    )
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    twice, total = model.run(x)
    np.testing.assert_array_equal(twice, 2 * x)
    np.testing.assert_array_equal(total, x.sum(axis=1))
    assert model.providers[-1] == CPU


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        load_model(_doubler(tmp_path / "d.onnx"), batch_size=0)


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("max 100000\n", None),  # no limit
        ("200000 100000\n", 2),  # a pod's cpu: 2
        ("150000 100000", 2),  # 1.5 CPUs: two threads may each run part of the time
        ("50000 100000", 1),  # 500m
        ("1000 100000", 1),  # never below one
        ("", None),
        ("garbage here", None),
        ("0 100000", None),
    ],
)
def test_quota_cpus(cpu_max: str, cpus: int | None) -> None:
    assert quota_cpus(cpu_max) == cpus


@pytest.mark.parametrize(
    ("cpus", "threads"), [(0, (1, 1)), (1, (1, 1)), (2, (1, 1)), (3, (1, 1)), (4, (2, 2))]
)
def test_pipelined_threads(cpus: int, threads: tuple[int, int]) -> None:
    assert pipelined_threads(cpus) == threads


def test_cpu_budget_is_the_affinity_capped_by_the_quota(tmp_path: Path) -> None:
    mine = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert cpu_budget(cpu_max) == mine  # no cgroup file: the affinity
    cpu_max.write_text("max 100000\n")
    assert cpu_budget(cpu_max) == mine
    cpu_max.write_text("100000 100000\n")
    assert cpu_budget(cpu_max) == 1
    cpu_max.write_text(f"{100000 * (mine + 3)} 100000\n")
    assert cpu_budget(cpu_max) == mine
