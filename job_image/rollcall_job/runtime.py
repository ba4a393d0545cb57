"""onnxruntime sessions: provider choice, threading, warm-up, batched runs.

One factory so every model in the container runs under the same settings: CUDA first when the
installed onnxruntime offers it (the GPU image installs onnxruntime-gpu), otherwise CPU; a fixed
thread budget so several sessions in one pod do not oversubscribe the cores they were given.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The providers to use: the requested ones that are installed, CPU always last.

    With nothing requested: CUDA when available, then CPU.
    """
    available = set(ort.get_available_providers())
    wanted = list(requested) if requested else [CUDA, CPU]
    chosen = [p for p in wanted if p in available and p != CPU]
    unknown = [p for p in wanted if p not in available]
    if unknown and requested:
        log.warning("onnxruntime providers not installed, skipped: %s", ", ".join(unknown))
    return [*chosen, CPU]


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def quota_cpus(cpu_max: str) -> int | None:
    """Whole CPUs a cgroup v2 ``cpu.max`` line ("<quota> <period>" or "max <period>") allows,
    rounded up; None when unlimited or unreadable."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def cpu_budget(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's quota (a pod's CPU limit).

    onnxruntime's own default is one intra-op thread per physical core *of the node*, which in a
    2-CPU pod on a 64-core node is 64 threads per session throttled by a 2-CPU quota.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota = quota_cpus(cpu_max.read_text())
    except OSError:
        quota = None
    return cpus if quota is None else min(cpus, quota)


def pipelined_threads(cpus: int) -> tuple[int, int]:
    """(detector, embedder) intra-op threads for ``cpus`` when the job loop runs both at once.

    The loop's two threads carry equal CPU (the detect-ahead one also embeds some faces:
    ``balance.EmbedShare``), so each session gets half the CPUs, at least one: 1 + 1 on a
    2-CPU pod. More intra-op threads only add wake-ups (``pthread_cond_signal`` was a tenth of
    the embedder's run). Through the job loop side by side at load 7-9: 10.8 CPU-ms/face with
    1 + 1, 12.2 with 1 + 2, 14.1 before (2 + 2, no sharing; bench/bench_models.py --splits).
    """
    half = max(1, cpus // 2)
    return half, half


def session_options(threads: int = 0, *, spin: bool = False) -> ort.SessionOptions:
    """Full graph optimisation; ``threads`` intra-op threads (0: onnxruntime's choice).

    Idle worker threads sleep instead of spinning unless ``spin``: spinning burns a pod's CPU
    quota and, on shared cores, measured 2-3x slower end to end (bench/bench_models.py).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = max(threads, 0)
    opts.inter_op_num_threads = 1  # one graph at a time; the parallelism is inside ops
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if saturating_int8(cpu_flags()):
        opts.add_session_config_entry("session.x64quantprecision", "1")
    return opts


def saturating_int8(flags: frozenset[str]) -> bool:
    """Whether onnxruntime's fast u8s8 kernel on this CPU adds each pair of int8 products in a
    saturating 16-bit register (x86 with AVX2 or AVX-512 but no VNNI).

    There an int8 card would compute something other than what ``bench/eval_faces.py`` measured
    (exact sums), so its sessions ask for the exact u8u8 kernel (``session.x64quantprecision``).
    Only there: elsewhere the option still rewrites the weights and measured 2x slower on an
    AVX-only CPU, for the same outputs.
    """
    vnni = {"avx512_vnni", "avx_vnni"} & flags
    return bool({"avx2", "avx512bw"} & flags) and not vnni


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's feature flags (empty where there is no such file, e.g. not Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def make_session(
    path: Path, *, providers: Sequence[str] | None = None, threads: int = 0, spin: bool = False
) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(path),
        sess_options=session_options(threads, spin=spin),
        providers=choose_providers(providers),
    )


class Model:
    """A session with one input, run in batches of at most ``batch_size``."""

    def __init__(self, session: ort.InferenceSession, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.session = session
        self.batch_size = batch_size
        self.input_name: str = session.get_inputs()[0].name
        self.output_names: list[str] = [o.name for o in session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """All outputs for the whole batch ``x``, computed ``batch_size`` rows at a time."""
        if len(x) <= self.batch_size:
            return self._run_one(x)
        parts = [
            self._run_one(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)
        ]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(self.output_names))]

    def _run_one(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        outs: list[Any] = self.session.run(self.output_names, {self.input_name: x})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def warm_up(self, shape: Sequence[int]) -> None:
        """One run on zeros, so the first real request does not pay for allocations."""
        self._run_one(np.zeros(tuple(shape), dtype=np.float32))


def load_model(
    path: Path,
    *,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    batch_size: int = 32,
    warm_up_shape: Sequence[int] | None = None,
    spin: bool = False,
) -> Model:
    session = make_session(path, providers=providers, threads=threads, spin=spin)
    model = Model(session, batch_size)
    if warm_up_shape is not None:
        model.warm_up(warm_up_shape)
    return model
