"""The int8 card on other x86 CPUs, emulated by qemu-user (Debian ``qemu-user``, installed by
``make system``), through the job's own session options.

onnxruntime picks its int8 kernel by the CPU it finds. On AVX2 CPUs without VNNI (Haswell to
Zen 3) the fast u8s8 kernel adds pairs of products in saturating 16-bit registers, so the job
asks there for the exact kernel (``runtime.saturating_int8`` reads ``/proc/cpuinfo``). This
machine has VNNI, so ``test_onnx_runtime``'s exact-sum test cannot fail here; in an emulated
Haswell the saturating kernel really runs. qemu-user shows the host's ``/proc/cpuinfo``, so the
script run inside gives ``runtime.cpu_flags`` the emulated CPU's flags instead.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from rollcall_job.faces import load_engine, read_image
from rollcall_job.models.assets import photo
from rollcall_job.models.build import build_models

pytestmark = [
    pytest.mark.models,
    pytest.mark.slow,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 kernel paths only"),
]

INT8 = "mobilefacenet-sirius-int8-v2"
# What /proc/cpuinfo lists for each emulated CPU (the features the rule looks at among them).
HASWELL = "fpu sse4_1 sse4_2 avx avx2 fma bmi2"
NEHALEM = "fpu sse4_1 sse4_2"
# The run inside the emulated CPU: the job's session (``runtime.load_model``, one thread) with
# ``runtime.cpu_flags`` answering ``argv[3]``; "host" leaves /proc/cpuinfo's answer.
EMBED = """
import sys
from pathlib import Path

import numpy as np

from rollcall_job import runtime

if sys.argv[3] != "host":
    flags = frozenset(sys.argv[3].split())
    runtime.cpu_flags = lambda *args: flags
x = np.load(sys.argv[1])
model = runtime.load_model(Path(sys.argv[4]), threads=1, batch_size=len(x))
np.save(sys.argv[2], model.run(x)[0].reshape(len(x), -1))
"""


def _embed(tmp: Path, model: Path, cpu: str | None, flags: str = "host") -> npt.NDArray[Any]:
    """The card's embeddings of ``tmp/faces.npy``, natively (``cpu`` None) or in
    ``qemu-x86_64 -cpu <cpu>``, by this venv's interpreter, the job's rule given ``flags``."""
    qemu = shutil.which("qemu-x86_64")
    if cpu is not None and qemu is None:
        pytest.fail("qemu-x86_64 is missing: `make system` installs Debian's qemu-user")
    script, out = tmp / "embed.py", tmp / f"{cpu}-{len(flags)}.npy"
    script.write_text(EMBED, encoding="utf-8")
    python = str(Path(sys.prefix) / "bin" / "python")  # the venv's, so its packages load
    prefix = [] if cpu is None else [str(qemu), "-cpu", cpu]
    subprocess.run(
        [*prefix, python, str(script), str(tmp / "faces.npy"), str(out), flags, str(model)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # qemu warns about host CPU features TCG lacks
        timeout=240,
    )
    embeddings: npt.NDArray[Any] = np.load(out)
    return embeddings


def _cosine_distance(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray(1 - np.sum(a * b, axis=1))


def test_the_int8_card_embeds_alike_on_cpus_with_and_without_vnni(tmp_path: Path) -> None:
    """Haswell with the job's rule gives this machine's embeddings to the bit (measured 0.00000);
    with the exact kernel not asked for (flags claiming VNNI) it does not (0.010 mean), which
    shows the emulated CPU really reaches the saturating kernel. Nehalem (SSE4.2: a widening kernel
    that needs no option) differs only in float rounding (0.0009 max)."""
    folder = build_models()
    engine = load_engine(folder / INT8, threads=1)
    image = read_image(photo("t1.jpg"))  # six people, insightface 2.1's sample
    crops = engine.align(image, engine.detect(image))
    assert len(crops) == 6
    np.save(tmp_path / "faces.npy", engine.prepare(np.stack(crops)))
    model = folder / INT8 / "embedder.onnx"

    here = _embed(tmp_path, model, None)
    haswell = _cosine_distance(here, _embed(tmp_path, model, "Haswell", HASWELL))
    saturated = _cosine_distance(here, _embed(tmp_path, model, "Haswell", f"{HASWELL} avx512_vnni"))
    nehalem = _cosine_distance(here, _embed(tmp_path, model, "Nehalem", NEHALEM))

    assert float(haswell.max()) < 1e-5, haswell
    assert float(saturated.mean()) > 1e-3, saturated
    assert float(nehalem.max()) < 2e-3, nehalem
