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
    cpu_flags,
    load_model,
    pipelined_threads,
    quota_cpus,
    saturating_int8,
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


def _int8_sum(path: Path, channels: int) -> Path:
    """A QDQ 1x1 convolution summing ``channels`` inputs with weight 1.0: inputs quantised to 255
    (scale 1/255) and weights to 127 (scale 1/127), so each adjacent pair of int products is
    2 * 255 * 127 = 64770, more than a 16-bit register holds."""
    f32, u8, i8 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8
    inits = [
        helper.make_tensor("xs", f32, [], [1 / 255]),
        helper.make_tensor("xz", u8, [], [0]),
        helper.make_tensor("w", i8, [1, channels, 1, 1], [127] * channels),
        helper.make_tensor("ws", f32, [], [1 / 127]),
        helper.make_tensor("wz", i8, [], [0]),
        helper.make_tensor("ys", f32, [], [channels / 255]),
        helper.make_tensor("yz", u8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["c"]),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8sum",
        [helper.make_tensor_value_info("x", f32, [1, channels, 4, 4])],
        [helper.make_tensor_value_info("y", f32, [1, 1, 4, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_int8_convolutions_sum_exactly_on_every_cpu(tmp_path: Path) -> None:
    """The job's sessions run an int8 convolution to the exact sum even where onnxruntime's fast
    u8s8 kernel would saturate each pair at 32767 (x86 with AVX2 or AVX-512, no VNNI: about half
    the sum here). On CPUs without that kernel it passes either way; on those it guards
    ``saturating_int8`` and the option it sets."""
    channels = 64
    model = load_model(_int8_sum(tmp_path / "s.onnx", channels), threads=1)
    (y,) = model.run(np.ones((1, channels, 4, 4), dtype=np.float32))
    np.testing.assert_allclose(y, channels, rtol=0.02)


@pytest.mark.parametrize(
    ("flags", "saturates"),
    [
        ("fpu sse4_1 avx fma", False),  # AVX only: the SSE kernel widens to 16 bits, exact
        ("sse4_1 avx avx2 fma", True),  # Haswell .. Zen 3: vpmaddubsw saturates
        ("avx2 avx512f avx512bw", True),  # Skylake-SP: AVX-512 without VNNI saturates too
        ("avx2 avx512f avx512bw avx512_vnni", False),  # Cascade Lake on: vpdpbusd, 32-bit sums
        ("avx2 avx_vnni", False),  # Alder Lake: AVX-VNNI
        ("fp asimd asimddp", False),  # arm64: dot products into 32 bits
        ("", False),
    ],
)
def test_saturating_int8(flags: str, saturates: bool) -> None:
    assert saturating_int8(frozenset(flags.split())) is saturates


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        (
            "processor\t: 0\nflags\t\t: fpu avx avx2\n\nprocessor\t: 1\nflags\t: x\n",
            {"fpu", "avx", "avx2"},
        ),
        ("processor\t: 0\nFeatures\t: fp asimd\n", {"fp", "asimd"}),
        ("processor\t: 0\n", set()),
    ],
)
def test_cpu_flags_reads_the_first_processor(tmp_path: Path, text: str, flags: set[str]) -> None:
    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_flags(tmp_path / "cpuinfo") == flags
    assert cpu_flags(tmp_path / "absent") == frozenset()


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
